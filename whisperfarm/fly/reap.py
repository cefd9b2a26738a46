"""``whisperfarm machines reap``: clean up the machines whisperfarm left on Fly.

Found by their metadata (``managed_by=whisperfarm``), whatever the ledger knows:

    a run's machine, run not going on          destroyed
    a pool machine running, run not going on   stopped (back in the pool), or destroyed
                                               with ``pool=True``
    a pool machine not running (stopped,       left alone, or destroyed with ``pool=True``
    created, failed or suspended)
    anything of a run still going              kept, unless ``everything``

A run is going on when the ledger marks it running and its process is alive here. Rows
the ledger thinks alive are brought up to date: a pool machine found not running
(stopped, failed, suspended) means ended. Fly's List may lag or answer empty, so a row
the list leaves out is looked up by Get: gone only when Fly says so for that machine
(404 or ``destroyed``); one that still exists is reaped like a listed one. A machine
whose metadata Fly can't show (its host is not ``ok``) is never reaped for that: only
when the ledger knows it as a created machine of a run that is over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from whisperfarm.errors import FlyError
from whisperfarm.fly.client import Machine, MachinesClient
from whisperfarm.fly.pool import (
    NOT_RUNNING,
    held_by_live_runs,
    is_pool,
    known_gone,
    live_runs,
    stop_left_running,
)
from whisperfarm.fly.store import MachineStore, from_pool
from whisperfarm.ledger import Ledger
from whisperfarm.states import MACHINE_ENDED, MachineState

log = logging.getLogger("whisperfarm.fly")


@dataclass(frozen=True)
class Reaped:
    destroyed: list[str]
    kept: list[str]  # machines of runs still going
    failed: list[str]  # destroys that failed
    stopped: list[str] = field(default_factory=list)  # pool machines put back in the pool
    idle: list[str] = field(default_factory=list)  # stopped pool machines left alone
    unstopped: list[str] = field(default_factory=list)  # stops that failed


def reap(
    client: MachinesClient, ledger: Ledger, *, everything: bool = False, pool: bool = False
) -> Reaped:
    """Destroy whisperfarm's machines left behind and stop pool machines left running,
    except those of runs still going (unless ``everything``); with ``pool``, destroy the
    warm pool too."""
    machines = MachineStore(ledger)
    live = live_runs(ledger)
    listed = client.list(metadata={"managed_by": "whisperfarm"})
    listed = listed + _catch_up(client, machines, live, listed)
    created_by_run = {
        row["id"]: row["run_id"]
        for row in machines.machines()
        if row["app"] == client.app and not from_pool(row)
    }
    held = held_by_live_runs(machines, client.app, live)
    destroyed: list[str] = []
    kept: list[str] = []
    failed: list[str] = []
    stopped: list[str] = []
    idle: list[str] = []
    unstopped: list[str] = []
    for machine in listed:
        if machine.state == MachineState.DESTROYED:
            continue
        owner = machine.metadata.get("whisperfarm_run")
        if not machine.metadata_known and not owner:
            if machine.id not in created_by_run:
                kept.append(machine.id)  # can't tell whose it is: never destroyed for that
                continue
            owner = created_by_run[machine.id]
        if is_pool(machine) and machine.state in NOT_RUNNING:  # failed ones too: no stop
            if pool and (everything or machine.id not in held):
                _destroy(client, machines, machine, destroyed, failed)
            else:
                idle.append(machine.id)
            continue
        if not everything and owner in live:
            kept.append(machine.id)
        elif is_pool(machine) and not pool:
            if stop_left_running(client, machines, machine) is None:
                unstopped.append(machine.id)
            else:
                stopped.append(machine.id)
        else:
            _destroy(client, machines, machine, destroyed, failed)
    seen = {m.id for m in listed}
    for row in machines.pool_machines(client.app):
        if row["id"] not in seen and known_gone(client, row["id"]):
            machines.forget_pool_machine(row["id"])
    return Reaped(destroyed, kept, failed, stopped, idle, unstopped)


def _catch_up(
    client: MachinesClient, machines: MachineStore, live: set[str], listed: list[Machine]
) -> list[Machine]:
    """Rows of ended runs that the ledger thinks alive: gone from Fly (by Get, not by the
    list) means destroyed, found idle in the pool means stopped. Only this app's: another
    app's machines are not in this listing at all. The machines the list left out that
    Get found alive, to be reaped like listed ones."""
    seen = {m.id: m for m in listed}
    found: dict[str, Machine] = {}
    for row in machines.machines():
        if (
            row["app"] != client.app
            or row["state"] == MachineState.DESTROYED
            or row["run_id"] in live
        ):
            continue
        machine = seen.get(row["id"]) or found.get(row["id"])
        if machine is None:
            try:
                machine = client.find(row["id"])
            except FlyError as error:
                log.warning("could not look %s up: %s", row["id"], error)
                continue
            if machine is not None and machine.state != MachineState.DESTROYED:
                found[machine.id] = machine
        if machine is None or machine.state == MachineState.DESTROYED:
            machines.update_machine(
                row["id"],
                state=MachineState.DESTROYED,
                error="gone when reaped",
                run_id=row["run_id"],
            )
        elif (
            from_pool(row)
            and row["state"] not in MACHINE_ENDED
            and (
                machine.state in NOT_RUNNING
                or (
                    machine.metadata_known
                    and machine.metadata.get("whisperfarm_run") != row["run_id"]
                )
            )
        ):
            state = machine.state if machine.state in MACHINE_ENDED else MachineState.STOPPED
            machines.update_machine(
                row["id"], state=state, error=f"found {state} when reaped", run_id=row["run_id"]
            )
    return list(found.values())


def _destroy(
    client: MachinesClient,
    machines: MachineStore,
    machine: Machine,
    destroyed: list[str],
    failed: list[str],
) -> None:
    try:
        client.destroy(machine.id, force=True)
    except FlyError as error:
        log.warning("could not destroy %s: %s", machine.id, error)
        failed.append(machine.id)
        return
    destroyed.append(machine.id)
    machines.update_machine(machine.id, state=MachineState.DESTROYED, error="reaped")
    machines.forget_pool_machine(machine.id)
