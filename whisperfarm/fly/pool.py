"""The warm pool: stopped Fly machines made ahead of time, for runs to start instead of create.

Fly creates one machine a second per app (burst 3), so a hundred take about 100 s; start
and update are limited per machine, so a hundred stopped machines start at once. Fly's
advice for fast starts is exactly this: create ahead, start when needed.

``whisperfarm machines warm N`` keeps N such machines (:func:`warm`): created with
``skip_launch``, ``auto_destroy`` off and restart policy ``no``, marked with the metadata
``whisperfarm_pool=warm``. A stopped machine runs nothing and bills no CPU or RAM, only
its root filesystem (:func:`~whisperfarm.fly.pricing.stopped_cost_per_month`).

A run takes pool machines first (:func:`usable`, then the ledger's ``hold_pool_machine``
so two runs never take the same one) and starts each with :func:`launch`: its config
becomes the run's worker config (``as_pool_config`` of what a created machine gets, with
a worker id of its own per run), then it starts. When its worker exits the machine stops
by itself; at the end of the run every pool machine still running is stopped, never
destroyed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from whisperfarm.errors import (
    FlyAuthError,
    FlyCapacityError,
    FlyError,
    FlyGPUUnsupported,
    FlyUnavailable,
    UsageError,
)
from whisperfarm.fly.client import Machine, MachinesClient, build_worker_config
from whisperfarm.fly.policy import CreateRate
from whisperfarm.fly.pricing import STOPPED_USD_PER_GB_MONTH, Size, stopped_cost_per_month
from whisperfarm.fly.store import MachineStore
from whisperfarm.ledger import Ledger
from whisperfarm.processes import process_alive
from whisperfarm.states import MachineState, RunState
from worker.config import WorkerConfig

log = logging.getLogger("whisperfarm.fly")

POOL_KEY = "whisperfarm_pool"
POOL_VALUE = "warm"
IDLE = (MachineState.STOPPED, MachineState.CREATED)  # a pool machine in these can start
NOT_RUNNING = (  # bills no CPU or RAM
    *IDLE,
    MachineState.FAILED,
    MachineState.SUSPENDED,
    MachineState.DESTROYED,
)
STOP_WAIT_SECONDS = 60.0
RUNNING = (MachineState.STARTING, MachineState.STARTED)
NAME_PREFIX = "wf-pool-"


def is_pool(machine: Machine) -> bool:
    return machine.metadata.get(POOL_KEY) == POOL_VALUE


def as_pool_config(config: Mapping[str, Any], *, worker_id: str | None = None) -> dict[str, Any]:
    """A worker config made fit for a pool machine: it stops when its worker exits (no
    auto-destroy, no restart) and carries the pool's mark. ``worker_id`` names the worker
    for one run: the machine id alone would mix the runs' workers in the ledger."""
    result = copy.deepcopy(dict(config))
    result["auto_destroy"] = False
    result["restart"] = {"policy": "no"}
    result["metadata"] = {**(result.get("metadata") or {}), POOL_KEY: POOL_VALUE}
    if worker_id is not None:
        worker_env = WorkerConfig.for_worker(given_id=worker_id).to_env()
        result["env"] = {**(result.get("env") or {}), **worker_env}
    return result


def idle_config(*, image: str, size: Size, model: str, name: str) -> dict[str, Any]:
    """The config a pool machine is created with; a run replaces it before starting it."""
    config = build_worker_config(
        image=image, size=size, env={}, run_id="", machine_name=name, model=model
    )
    config["metadata"].pop("whisperfarm_run")
    return as_pool_config(config)


def pool_worker_id(machine_id: str, run_id: str) -> str:
    return f"{machine_id}-{run_id}"


def fits(machine: Machine, *, image: str, size: Size, region: str | None) -> bool:
    """Made for this image, size and region: starting it needs no new image and no other
    host (an update that changed either would be as slow as a create, or fail)."""
    guest = machine.config.get("guest") or {}
    return (
        machine.config.get("image") == image
        and guest.get("cpu_kind") == "performance"
        and guest.get("cpus") == size.cpus
        and guest.get("memory_mb") == size.memory_mb
        and (region is None or machine.region == region)
    )


def usable(
    listed: Iterable[Machine],
    *,
    image: str,
    size: Size,
    region: str | None,
    held: Collection[str] = (),
) -> list[Machine]:
    """The pool machines a run may start now, in name order: marked as the pool's, idle on
    Fly, not held by a live run (``held``), and fit for the run's image, size and region."""
    return sorted(
        (
            machine
            for machine in listed
            if is_pool(machine)
            and machine.state in IDLE
            and machine.id not in held
            and fits(machine, image=image, size=size, region=region)
        ),
        key=lambda machine: (machine.name, machine.id),
    )


def known_gone(client: MachinesClient, machine_id: str) -> bool:
    """Whether Fly says this machine is gone (Get: 404 or ``destroyed``): its absence from
    a List proves nothing, the list may lag. False when Fly can't be asked."""
    try:
        machine = client.find(machine_id)
    except FlyError as error:
        log.warning("could not look %s up: %s", machine_id, error)
        return False
    return machine is None or machine.state == MachineState.DESTROYED


def live_runs(ledger: Ledger) -> set[str]:
    """Runs going on now: marked running, and their process is alive on this machine."""
    return {
        run["id"]
        for run in ledger.runs()
        if run["state"] == RunState.RUNNING and run["pid"] and process_alive(run["pid"])
    }


def held_by_live_runs(machines: MachineStore, app: str, live: Collection[str]) -> set[str]:
    return {row["id"] for row in machines.pool_machines(app) if row["run_id"] in live}


def ready_in_ledger(ledger: Ledger, app: str, *, image: str, size: Size, region: str | None) -> int:
    """Pool machines a run could start at once, as the ledger last saw them (no API call:
    for the plan printed before a run): idle, not held by a live run, fit for the run."""
    live = live_runs(ledger)
    return sum(
        1
        for row in MachineStore(ledger).pool_machines(app)
        if row["state"] in IDLE
        and row["run_id"] not in live
        and row["image"] == image
        and row["size"] == size.name
        and (region is None or row["region"] == region)
    )


# -- starting one for a run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Launched:
    """What became of one pool machine a run tried to start."""

    machine_id: str
    state: str  # as last seen: "starting"/"started" when it goes; "unknown" when unsure
    error: str | None = None  # why it was not started

    @property
    def going(self) -> bool:
        return self.error is None and self.state in RUNNING


def launch(
    client: MachinesClient,
    machine_id: str,
    config: Mapping[str, Any],
    *,
    attempts: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> Launched:
    """Give a stopped pool machine the run's config and start it.

    Whether Fly starts a stopped machine on update is unconfirmed, so this works under
    either reading: update with ``skip_launch``; start, unless the update's answer shows
    it starting already; a start refused because it is starting or started counts as a
    start, one refused while the update is still being applied is tried again. Reaching
    ``started`` is what the fleet's controller then waits for, with its start timeout.
    A GPU config or a bad token raise; other failures come back as ``error``.
    """
    try:
        machine = client.update(machine_id, config, skip_launch=True)
    except (FlyAuthError, FlyGPUUnsupported):
        raise
    except FlyUnavailable as error:
        # The update may have been applied; the controller sees what happened next.
        return Launched(machine_id, "unknown", f"update failed: {error}")
    except FlyError as error:
        return Launched(machine_id, MachineState.STOPPED, f"update refused: {error}")
    if machine.state in RUNNING:
        return Launched(machine_id, machine.state)
    state = machine.state
    for attempt in range(attempts):
        try:
            client.start(machine_id)
            return Launched(machine_id, MachineState.STARTING)
        except FlyAuthError:
            raise
        except FlyError as error:
            try:
                state = client.get(machine_id).state
            except FlyError:
                return Launched(machine_id, "unknown", f"start failed: {error}")
            if state in RUNNING:
                return Launched(machine_id, state)
            if state not in (MachineState.UPDATING, MachineState.REPLACING):
                return Launched(machine_id, state, f"start refused: {error}")
        sleep(1.0 + attempt)
    return Launched(machine_id, state, f"still {state} after {attempts} starts")


# -- keeping the pool ---------------------------------------------------------------------------


@dataclass
class PoolReport:
    """What ``warm`` found and did."""

    target: int
    size: Size
    image: str
    region: str | None
    rootfs_gb: float
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # running for a live run: left alone
    stopped_now: list[str] = field(default_factory=list)  # running for no live run: stopped
    failed: list[str] = field(default_factory=list)  # destroys that failed
    unstopped: list[str] = field(default_factory=list)  # stops that failed
    error: str | None = None  # why fewer were created than asked for

    @property
    def stopped(self) -> int:
        return len(self.created) + len(self.kept)

    @property
    def usd_per_month(self) -> float:
        return stopped_cost_per_month(self.stopped, self.rootfs_gb)


def describe_storage(machines: int, rootfs_gb: float) -> str:
    cost = stopped_cost_per_month(machines, rootfs_gb)
    return (
        f"about ${cost:.2f} a month ({machines} × {rootfs_gb:g} GB root filesystem × "
        f"${STOPPED_USD_PER_GB_MONTH:.2f}/GB-month; {rootfs_gb:g} GB is an estimate of the "
        "unpacked image, set fly_rootfs_gb or --rootfs-gb to its real size)"
    )


def _names(taken: Iterable[str], count: int) -> list[str]:
    used = set(taken)
    names: list[str] = []
    n = 1
    while len(names) < count:
        name = f"{NAME_PREFIX}{n:03d}"
        if name not in used:
            names.append(name)
        n += 1
    return names


def warm(
    client: MachinesClient,
    ledger: Ledger,
    target: int,
    *,
    image: str,
    size: Size,
    model: str,
    region: str | None = None,
    rootfs_gb: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PoolReport:
    """Make the pool exactly ``target`` stopped machines fit for ``image``, ``size`` and
    ``region``: create the missing ones (at Fly's create rate, not launched), destroy
    extra ones and ones made for another image, size or region. Machines held by a live
    run or running for one are left alone and count towards the target if they fit; ones
    running for no live run are stopped first, then kept or destroyed like the others;
    ``warm 0`` destroys every one no live run uses."""
    if target < 0:
        raise UsageError("the pool size must be 0 or more")
    report = PoolReport(target, size, image, region, rootfs_gb)
    machines = MachineStore(ledger)
    listed = [
        m for m in client.list(metadata={POOL_KEY: POOL_VALUE}) if m.state != MachineState.DESTROYED
    ]
    live = live_runs(ledger)
    held = held_by_live_runs(machines, client.app, live)
    running = [m for m in listed if m.state not in NOT_RUNNING]
    # Held by or running for a live run: not ours to touch. Failed ones are replaced.
    busy = [
        m
        for m in listed
        if m.id in held or (m in running and m.metadata.get("whisperfarm_run") in live)
    ]
    for index, machine in enumerate(listed):
        if machine in running and machine not in busy:
            # Left running by a run that is over: it bills until stopped.
            stopped = stop_left_running(client, machines, machine)
            if stopped is None:
                report.unstopped.append(machine.id)  # left as it is, for reap
            else:
                report.stopped_now.append(machine.id)
                listed[index] = stopped
    report.busy = [m.id for m in busy]
    fitting = usable(listed, image=image, size=size, region=region, held=held)
    room = max(0, target - sum(1 for m in busy if fits(m, image=image, size=size, region=region)))
    keep = fitting[:room]
    report.kept = [m.id for m in keep]
    doomed = [m for m in listed if m not in busy and m not in keep and m.id not in report.unstopped]
    for machine in listed:
        if machine in keep or machine in busy:
            _remember(machines, client.app, machine, size, machine.state)
    for machine in doomed:
        try:
            client.destroy(machine.id, force=True)
        except FlyError as error:
            log.warning("could not destroy pool machine %s: %s", machine.id, error)
            report.failed.append(machine.id)
            continue
        report.destroyed.append(machine.id)
        machines.forget_pool_machine(machine.id)
    listed_ids = {m.id for m in listed}
    for row in machines.pool_machines(client.app):
        if row["id"] not in listed_ids and known_gone(client, row["id"]):
            machines.forget_pool_machine(row["id"])  # gone from Fly while no one watched
    rate = CreateRate(clock())
    for name in _names((m.name for m in listed), room - len(keep)):
        while not rate.take(clock()):
            sleep(rate.wait())
        config = idle_config(image=image, size=size, model=model, name=name)
        try:
            machine = client.create(config, name=name, region=region, skip_launch=True)
        except (FlyCapacityError, FlyUnavailable) as error:
            report.error = str(error)
            break
        finally:
            rate.settle(clock())
        report.created.append(machine.id)
        _remember(machines, client.app, machine, size, machine.state or MachineState.CREATED)
    return report


def stop_left_running(
    client: MachinesClient, machines: MachineStore, machine: Machine
) -> Machine | None:
    """Stop a pool machine left running by a run that is over, and wait until it is (it
    bills until then); close that run's row and free the machine. The machine as it is
    now, or None when it could not be stopped."""
    owner = machine.metadata.get("whisperfarm_run")
    try:
        client.stop(machine.id, signal="SIGTERM")
        stopped = client.wait(machine.id, MachineState.STOPPED, timeout=STOP_WAIT_SECONDS)
    except FlyError as error:
        log.warning("could not stop %s: %s", machine.id, error)
        return None
    if owner:
        machines.update_machine(
            machine.id, state=MachineState.STOPPED, error="stopped, its run over", run_id=owner
        )
        machines.release_pool_machine(machine.id, owner, state=MachineState.STOPPED)
    machines.update_pool_machine(machine.id, state=MachineState.STOPPED)
    return stopped


def _remember(machines: MachineStore, app: str, machine: Machine, size: Size, state: str) -> None:
    guest = machine.config.get("guest") or {}
    named = size.name if guest.get("cpus") == size.cpus else f"performance-{guest.get('cpus')}x"
    machines.record_pool_machine(
        machine_id=machine.id,
        app=app,
        name=machine.name or machine.id,
        region=machine.region or None,
        size=named,
        image=str(machine.config.get("image") or ""),
        state=state,
    )
