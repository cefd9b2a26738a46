"""What a Fly run is set up with, worked out from settings before any API call.

:func:`fly_config` turns settings (and a calibration, if one was measured) into a
:class:`FlyConfig`: the app, worker image and machine size, the fleet's limits and the
machine speed they assume; :func:`fly_client` makes the Machines API client from the
token; :func:`estimate` and :func:`describe_plan` give the plan printed before a run
starts: machines, wall time and cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from whisperfarm.calibration import Calibration
from whisperfarm.errors import FlyAuthError, FlyUnavailable, UsageError
from whisperfarm.fly.client import MachinesClient
from whisperfarm.fly.policy import FleetLimits, Plan, machine_speed, plan
from whisperfarm.fly.pool import ready_in_ledger
from whisperfarm.fly.pricing import Size, size_named
from whisperfarm.fly.reach import ReachLimits
from whisperfarm.ledger import Ledger
from whisperfarm.settings import Settings
from worker.config import WorkerConfig


def default_size(model: str) -> str:
    """A performance size that suits the model: small models gain little from more CPUs
    per machine (more machines is better); large ones need the memory and the threads."""
    if model.startswith(("tiny", "base")):
        return "performance-2x"
    if model.startswith(("small", "distil-small")):
        return "performance-4x"
    return "performance-8x"


@dataclass(frozen=True)
class FlyConfig:
    app: str
    image: str
    size: Size
    model: str
    advertise_url: str
    limits: FleetLimits
    region: str | None = None
    poll_seconds: float = 2.0
    start_timeout: float = 300.0
    give_up_seconds: float = 300.0
    worker_give_up_seconds: float = 60.0
    # Local workers share the queue: a budget too small for any machine then just means
    # no machines, not the end of the run.
    with_local_workers: bool = False
    speed_source: str = "built-in estimate"
    pool_parallel: int = 16  # pool machines updated and started at once
    pool_stop_wait: float = 90.0  # seconds to wait at the end for pool machines to stop
    # Reachability first, then scale (reach.py); ``fly_config`` always sets it. None scales
    # at once without waiting for a worker to reach the coordinator: the fleet's unit
    # tests of scaling use that.
    reach: ReachLimits | None = None

    def worker_env(self, token: str) -> dict[str, str]:
        """What a worker machine of this config gets in its environment."""
        return WorkerConfig.for_worker(
            url=self.advertise_url,
            token=token,
            preload_model=self.model,
            threads=self.size.cpus,
            given_kind="fly",
            give_up_seconds=self.worker_give_up_seconds,
        ).to_env()


def fly_config(
    settings: Settings,
    *,
    with_local_workers: bool = False,
    calibration: Calibration | None = None,
) -> FlyConfig:
    """Everything a Fly run needs from settings, checked before any API call."""
    if not settings.fly_app:
        raise UsageError("Fly machines need the worker app: set FLY_APP or pass --app")
    if not settings.advertise_url:
        raise UsageError(
            "Fly machines need --advertise-url: the address they reach this "
            "coordinator at, e.g. http://laptop._peer.internal:8765 over a Fly WireGuard "
            "peer, with --host :: --port 8765 (see the README)"
        )
    size = worker_size(settings)
    if settings.speed is not None:
        per_cpu: float | None = settings.speed
        source = f"your speed setting, {settings.speed:g}× realtime per CPU"
    elif calibration is not None:
        per_cpu, source = calibration.per_cpu, calibration.describe()
    else:
        per_cpu = None
        source = f"built-in estimate for {settings.model}; improves once a run has measured it"
    limits = FleetLimits(
        max_machines=settings.max_machines,
        budget=settings.budget,
        price_per_second=size.usd_per_second,
        speed=machine_speed(settings.model, size.cpus, per_cpu),
        start_latency=settings.fly_start_latency,
        stop_margin=settings.fly_stop_margin,
        longest_chunk=settings.chunk_max_seconds,
    )
    return FlyConfig(
        app=settings.fly_app,
        image=worker_image(settings),
        size=size,
        model=settings.model,
        advertise_url=settings.advertise_url.rstrip("/"),
        limits=limits,
        region=settings.region,
        poll_seconds=settings.fly_poll_seconds,
        start_timeout=settings.fly_start_timeout,
        give_up_seconds=settings.fly_give_up_seconds,
        worker_give_up_seconds=settings.fly_worker_give_up_seconds,
        with_local_workers=with_local_workers,
        speed_source=source,
        reach=ReachLimits(
            timeout=settings.fly_reach_timeout,
            limit=settings.fly_unreached_limit,
            give_up=max(0.0, settings.fly_worker_give_up_seconds - settings.fly_poll_seconds),
        ),
    )


def worker_size(settings: Settings) -> Size:
    """The machine size: the setting, else one that suits the model."""
    return size_named(settings.machine_size or default_size(settings.model), prices=settings.prices)


def worker_image(settings: Settings) -> str:
    return settings.image or f"registry.fly.io/{settings.fly_app}:latest"


def fly_client(settings: Settings) -> MachinesClient:
    if settings.fly_api_token is None or not settings.fly_api_token.get_secret_value().strip():
        raise FlyAuthError(
            "no Fly API token: set FLY_API_TOKEN to a token from "
            f"`fly tokens create deploy -a {settings.fly_app or 'APP'}`"
        )
    return MachinesClient(
        settings.fly_app or "",
        settings.fly_api_token.get_secret_value(),
        base_url=settings.fly_api_url,
    )


def ask_fly_first(client: MachinesClient) -> None:
    """One List before a run cuts any audio or starts anything: a wrong token, a missing
    app, or no way to reach Fly's API (no network, DNS, a proxy) then fails in one line,
    not after minutes of a fleet backing off (``fly_give_up_seconds``)."""
    try:
        client.list(metadata={"managed_by": "whisperfarm"})
    except FlyUnavailable as error:
        raise FlyUnavailable(
            f"can't use Fly's Machines API from here: {error}. Nothing was started: check "
            "this machine's network (and FLY_API_HOSTNAME if set), then rerun",
            status=error.status,  # its message names the fly-request-id already
        ) from error


def estimate(config: FlyConfig, audio_seconds: float, *, ready: int = 0) -> Plan:
    """The plan printed before a run: machines, wall time and cost; one machine first
    (reachability first), then ``ready`` machines of the warm pool at once and the rest
    created at Fly's create rate."""
    # The cutter ends a chunk at a pause, a little before its longest (25 s of 27).
    chunks = max(1, math.ceil(audio_seconds / max(1.0, config.limits.longest_chunk - 2)))
    return plan(audio_seconds, chunks, config.limits, ready=ready, probe=config.reach is not None)


def describe_plan(config: FlyConfig, plan: Plan, audio_seconds: float, *, ready: int = 0) -> str:
    source = config.speed_source
    budget = f" of a ${config.limits.budget:.2f} budget" if config.limits.budget is not None else ""
    where = f" in {config.region}" if config.region else ""
    pool = f", {min(ready, plan.machines)} from the warm pool" if ready else ""
    probe = ""
    if config.reach is not None and plan.machines > 1:
        probe = (
            f"\n      one machine first, the others once its worker reaches "
            f"{config.advertise_url} (within {config.reach.timeout:.0f}s, else the run stops)"
        )
    return (
        f"plan: {audio_seconds / 60:.1f} min of audio on up to {plan.machines} × "
        f"{config.size.name}{where}{pool} (app {config.app}, image {config.image})\n"
        f"      about {plan.wall_seconds / 60:.1f} min wall time and ${plan.cost:.2f}{budget}; "
        f"machine speed {config.limits.speed:.1f}× realtime ({source}){probe}"
    )


def pool_ready(settings: Settings, config: FlyConfig) -> int:
    """Warm-pool machines this run could start at once, as the ledger last saw them
    (without creating a ledger where there is none)."""
    if not settings.ledger_path.exists():
        return 0
    ledger = Ledger(settings.ledger_path)
    try:
        return ready_in_ledger(
            ledger, config.app, image=config.image, size=config.size, region=config.region
        )
    finally:
        ledger.close()
