"""The Fly fleet: worker machines started through the Machines API, within a budget.

A controller thread ticks every ``poll_seconds``:

1. list the run's machines (found by metadata) and record what it sees in the ledger;
   a machine gone from the list is destroyed (it exits and auto-destroys when the queue is
   empty); one stuck starting past ``start_timeout`` is destroyed and not counted; one
   listed but not in the ledger (a create that failed ambiguously yet made it) is adopted,
   so it is counted, billed and destroyed like the others;
2. if the spend so far plus what the running machines bill while stopping reaches the
   budget, destroy them all and report BudgetReached;
3. ask ``policy.machines_to_start`` how many more to create, and create them at Fly's
   create rate (1/s, burst 3), each with a unique name so a retried create never makes two.

Capacity errors and API outages on create are not fatal: the controller backs off and
tries again, and fails the run only when no machine at all could be had for
``give_up_seconds`` while it wanted one. A bad token, a GPU request or a bad config fail
at once.

``stop()`` destroys every machine the run created that is not gone yet, including any
that Fly lists for the run but the ledger missed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from whisperfarm.errors import (
    BudgetReached,
    FlyAuthError,
    FlyCapacityError,
    FlyError,
    FlyUnavailable,
    UsageError,
    WhisperfarmError,
)
from whisperfarm.fly.client import Machine, MachinesClient, build_worker_config
from whisperfarm.fly.policy import (
    FleetLimits,
    FleetState,
    Plan,
    machine_speed,
    machines_to_start,
    must_stop,
    plan,
)
from whisperfarm.fly.pricing import Size, size_named
from whisperfarm.ledger import Ledger
from whisperfarm.settings import Settings

if TYPE_CHECKING:
    from whisperfarm.calibration import Calibration

log = logging.getLogger("whisperfarm.fly")

ENDED = ("stopped", "failed", "destroyed", "suspended")
STARTING = ("created", "creating", "starting", "launch_failed", "replacing", "updating")
CREATE_BACKOFF_SECONDS = 15.0  # after a create failed for capacity or an outage


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


class FlyFleet:
    def __init__(
        self,
        client: MachinesClient,
        config: FlyConfig,
        *,
        ledger_path: Path,
        run_id: str,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.config = config
        self.ledger_path = ledger_path
        self.run_id = run_id
        self.clock = clock
        budget = f", budget ${config.limits.budget:.2f}" if config.limits.budget is not None else ""
        self.description = (
            f"Fly app {config.app}: up to {config.limits.max_machines} × {config.size.name}"
            f"{f' in {config.region}' if config.region else ''}{budget}"
        )
        self.error: WhisperfarmError | None = None
        self.leftovers: list[str] = []
        self._env: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created = 0
        self._create_tokens = 3.0
        self._last_refill = clock()
        self._backoff_until = 0.0
        self._no_machine_since: float | None = None
        self._create_asked_at: dict[str, float] = {}  # machine name → when created
        self._last_tick_seconds = 0.0
        self._capped = False
        self._gone: list[str] = []

    # Fleet protocol ------------------------------------------------------------------

    def start(self, url: str, token: str, model: str) -> None:
        del url, model  # machines reach the coordinator by the advertised URL, load by name
        self._env = {
            "WHISPERFARM_URL": self.config.advertise_url,
            "WHISPERFARM_TOKEN": token,
            "WHISPERFARM_MODEL": self.config.model,
            "WHISPERFARM_THREADS": str(self.config.size.cpus),
            "WHISPERFARM_WORKER_KIND": "fly",
            "WHISPERFARM_GIVE_UP_SECONDS": str(self.config.worker_give_up_seconds),
        }
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            ledger.set_run_limits(
                self.run_id,
                budget=self.config.limits.budget,
                max_machines=self.config.limits.max_machines,
            )
        finally:
            ledger.close()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fly-fleet")
        self._thread.start()

    def check(self, ledger: Ledger, work_left: bool) -> None:
        del ledger, work_left
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            try:
                self._adopt_strays(ledger, self._list())
            except FlyError as error:  # destroy what the ledger knows all the same
                log.warning("could not list machines before destroying them: %s", error)
            self._destroy_all(ledger)
            self._gone = [
                row["id"] for row in ledger.machines(self.run_id) if row["state"] == "destroyed"
            ]
        finally:
            ledger.close()

    def gone_workers(self) -> list[str]:
        """Destroyed machines; a worker on Fly is named by its machine id."""
        return list(self._gone)

    # The controller ------------------------------------------------------------------

    def _run(self) -> None:
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.tick(ledger)
                except WhisperfarmError as error:
                    self.error = error
                    return
                self._last_tick_seconds = time.monotonic() - started
                self._stop.wait(self.config.poll_seconds)
        except Exception as error:  # a bug must not leave machines running unnoticed
            log.exception("fleet controller crashed")
            self.error = FlyError(f"the fleet controller failed: {error}")
        finally:
            ledger.close()

    def tick(self, ledger: Ledger) -> None:
        """One round of observe → budget check → scale. Public for tests."""
        now = self.clock()
        self._observe(ledger, now)
        active = [m for m in ledger.machines(self.run_id) if m["state"] not in ENDED]
        remaining, chunks_left = ledger.work_left(ledger.run_episodes(self.run_id))
        state = FleetState(remaining, chunks_left, len(active), ledger.spend(self.run_id))
        # Until the next check: one poll, plus as long as the last tick took (API retries
        # can block a tick while the machines go on billing).
        lookahead = self.config.poll_seconds + self._last_tick_seconds
        if must_stop(state, self.config.limits, lookahead=lookahead):
            self._destroy_all(ledger)
            if not self.config.with_local_workers:
                raise BudgetReached(self._budget_message(ledger, remaining))
            # Local workers finish the rest for free; no more machines this run.
            log.warning("budget reached: machines stopped, local workers carry on")
            self._capped = True
        wanted = 0 if self._capped else machines_to_start(state, self.config.limits)
        if (
            not wanted
            and not active
            and chunks_left
            and self.config.limits.budget is not None
            and not self.config.with_local_workers
            and self._only_fly_workers(ledger, now)
        ):
            # Nothing runs, work is left, and the budget can't start a machine.
            raise BudgetReached(self._budget_message(ledger, remaining))
        # The give-up clock runs only while machines are wanted and none could be had: not
        # while the budget holds them back and another worker does the work.
        if active or not wanted:
            self._no_machine_since = None
        elif self._no_machine_since is None:
            self._no_machine_since = now
        if (
            self._no_machine_since is not None
            and now - self._no_machine_since > self.config.give_up_seconds
        ):
            raise FlyUnavailable(
                f"no Fly machine could be started for {self.config.give_up_seconds:.0f}s "
                "(capacity or API errors); try another --region or later; the episode is "
                "kept, rerun to resume"
            )
        if now < self._backoff_until:
            return
        for _ in range(wanted):
            if self._stop.is_set() or not self._take_create_token(now):
                break
            if not self._create(ledger):
                break

    def _only_fly_workers(self, ledger: Ledger, now: float) -> bool:
        """No other worker (local, remote) has been active in the last half minute."""
        return not any(w["kind"] != "fly" and w["last_seen"] > now - 30 for w in ledger.workers())

    def _list(self) -> list[Machine]:
        return self.client.list(metadata={"whisperfarm_run": self.run_id})

    def _observe(self, ledger: Ledger, now: float) -> None:
        try:
            listed = self._list()
        except FlyUnavailable as error:
            log.warning("could not list machines: %s", error)
            return
        self._adopt_strays(ledger, listed)
        seen = {m.id: m for m in listed}
        for row in ledger.machines(self.run_id):
            if row["state"] == "destroyed":
                continue
            machine = seen.get(row["id"])
            state = machine.state if machine is not None else "destroyed"
            if state != row["state"]:
                ledger.update_machine(row["id"], state=state)
                if state in ENDED:
                    # Its worker is gone with it: hand its chunk back now, not at expiry.
                    ledger.release_leases([row["id"]], count_attempt=True)
            if state in STARTING and now - row["created_at"] > self.config.start_timeout:
                log.warning("machine %s stuck %s; destroying it", row["id"], state)
                self._destroy(ledger, row["id"], reason=f"stuck {state}")

    def _take_create_token(self, now: float) -> bool:
        """Fly allows one create a second per app, with a burst of three."""
        self._create_tokens = min(3.0, self._create_tokens + (now - self._last_refill))
        self._last_refill = now
        if self._create_tokens < 1:
            return False
        self._create_tokens -= 1
        return True

    def _adopt_strays(self, ledger: Ledger, listed: list[Machine]) -> None:
        """Record machines Fly lists for this run that the ledger lacks: a create that
        timed out may have made its machine after all. They bill from when their create
        was asked for, so the spend stays conservative."""
        known = {row["id"] for row in ledger.machines(self.run_id)}
        for machine in listed:
            if machine.id in known or machine.state == "destroyed":
                continue
            log.warning(
                "adopting machine %s (%s): its create looked failed", machine.id, machine.name
            )
            self._record(ledger, machine, self._create_asked_at.get(machine.name))

    def _record(self, ledger: Ledger, machine: Machine, created_at: float | None) -> None:
        ledger.record_machine(
            machine_id=machine.id,
            run_id=self.run_id,
            name=machine.name or machine.id,
            app=self.config.app,
            region=machine.region or self.config.region,
            size=self.config.size.name,
            cpus=self.config.size.cpus,
            memory_mb=self.config.size.memory_mb,
            usd_per_second=self.config.size.usd_per_second,
            state=machine.state or "created",
            created_at=created_at,
        )

    def _create(self, ledger: Ledger) -> bool:
        self._created += 1
        name = f"wf-{self.run_id}-{self._created:03d}"
        config = build_worker_config(
            image=self.config.image,
            size=self.config.size,
            env=self._env,
            run_id=self.run_id,
            machine_name=name,
            model=self.config.model,
        )
        # The machine bills from when it was asked for: a retried create may have made it
        # on its first attempt, long before the answer came.
        asked_at = self._create_asked_at[name] = self.clock()
        try:
            machine = self.client.create(config, name=name, region=self.config.region)
        except (FlyCapacityError, FlyUnavailable) as error:
            log.warning("could not create a machine now (%s); backing off", error)
            # From when the failure came, not when the tick began: the client's own
            # retries may have taken longer than the backoff.
            self._backoff_until = self.clock() + CREATE_BACKOFF_SECONDS
            return False
        self._record(ledger, machine.model_copy(update={"name": name}), asked_at)
        if self._stop.is_set():
            # stop() gave up waiting for this thread and may have destroyed the others
            # already: this machine must not outlive the run.
            self._destroy(ledger, machine.id, reason="created while stopping")
            return False
        return True

    def _destroy(self, ledger: Ledger, machine_id: str, *, reason: str | None = None) -> bool:
        try:
            self.client.destroy(machine_id, force=True)
        except FlyError as error:
            log.warning("could not destroy machine %s: %s", machine_id, error)
            return False
        ledger.update_machine(machine_id, state="destroyed", error=reason)
        return True

    def _destroy_all(self, ledger: Ledger) -> None:
        self.leftovers = [
            row["id"]
            for row in ledger.machines(self.run_id)
            if row["state"] != "destroyed" and not self._destroy(ledger, row["id"])
        ]

    def _budget_message(self, ledger: Ledger, remaining: float) -> str:
        limits = self.config.limits
        done, total = ledger.chunk_counts(ledger.run_episodes(self.run_id))
        finish = (limits.start_latency + remaining / limits.speed + limits.stop_margin) * (
            limits.price_per_second
        )
        spent = ledger.spend(self.run_id)
        return (
            f"budget ${limits.budget:.2f} reached (${spent:.2f} spent): {done} of {total} chunks "
            f"done, {remaining / 60:.1f} min of audio left, every machine stopped. Finishing "
            f"costs about ${finish:.2f} more: rerun the same command with a larger --budget"
        )


def fly_config(
    settings: Settings,
    *,
    with_local_workers: bool = False,
    calibration: Calibration | None = None,
) -> FlyConfig:
    """Everything a Fly run needs from settings, checked before any API call."""
    if not settings.fly_app:
        raise UsageError("--backend fly needs the worker app: set FLY_APP or pass --app")
    if not settings.advertise_url:
        raise UsageError(
            "--backend fly needs --advertise-url: the address Fly machines reach this "
            "coordinator at, e.g. http://laptop._peer.internal:8765 over a Fly WireGuard "
            "peer, with --host :: --port 8765 (see the README)"
        )
    size = size_named(settings.machine_size or default_size(settings.model), prices=settings.prices)
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
    )
    return FlyConfig(
        app=settings.fly_app,
        image=settings.image or f"registry.fly.io/{settings.fly_app}:latest",
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
    )


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


def estimate(config: FlyConfig, audio_seconds: float) -> Plan:
    """The plan printed before a run: machines, wall time and cost."""
    chunks = max(1, math.ceil(audio_seconds / 25))
    return plan(audio_seconds, chunks, config.limits)


def describe_plan(config: FlyConfig, plan: Plan, audio_seconds: float) -> str:
    source = config.speed_source
    budget = f" of a ${config.limits.budget:.2f} budget" if config.limits.budget is not None else ""
    where = f" in {config.region}" if config.region else ""
    return (
        f"plan: {audio_seconds / 60:.1f} min of audio on up to {plan.machines} × "
        f"{config.size.name}{where} (app {config.app}, image {config.image})\n"
        f"      about {plan.wall_seconds / 60:.1f} min wall time and ${plan.cost:.2f}{budget}; "
        f"machine speed {config.limits.speed:.1f}× realtime ({source})"
    )


@dataclass(frozen=True)
class Reaped:
    destroyed: list[str]
    kept: list[str]  # machines of runs still going
    failed: list[str]


def reap(client: MachinesClient, ledger: Ledger, *, everything: bool = False) -> Reaped:
    """Destroy whisperfarm's machines left behind (found by metadata), except those of runs
    still going, unless ``everything``."""
    from whisperfarm.status import process_alive

    live_runs = {
        run["id"]
        for run in ledger.runs()
        if run["state"] == "running" and run["pid"] and process_alive(run["pid"])
    }
    known = {row["id"] for row in ledger.machines()}
    listed = client.list(metadata={"managed_by": "whisperfarm"})
    listed_ids = {m.id for m in listed}
    destroyed, kept, failed = [], [], []
    # Machines the ledger thinks alive but Fly no longer lists ended while no one watched.
    # Only this app's: another app's machines are not in this listing at all.
    for row in ledger.machines():
        gone = row["id"] not in listed_ids
        if (
            row["app"] == client.app
            and row["state"] != "destroyed"
            and row["run_id"] not in live_runs
            and gone
        ):
            ledger.update_machine(row["id"], state="destroyed", error="gone when reaped")
    for machine in listed:
        if machine.state == "destroyed":
            continue
        if not everything and machine.metadata.get("whisperfarm_run") in live_runs:
            kept.append(machine.id)
            continue
        try:
            client.destroy(machine.id, force=True)
        except FlyError as error:
            log.warning("could not destroy %s: %s", machine.id, error)
            failed.append(machine.id)
            continue
        destroyed.append(machine.id)
        if machine.id in known:
            ledger.update_machine(machine.id, state="destroyed", error="reaped")
    return Reaped(destroyed, kept, failed)
