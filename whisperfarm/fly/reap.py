"""``whisperfarm machines reap``: clean up the machines whisperfarm left on Fly.

Found by their metadata (``managed_by=whisperfarm``), whatever the ledger knows:

    a run's machine, run not going on          destroyed
    a pool machine running, run not going on   stopped (back in the pool), or destroyed
                                               with ``pool=True``
    a pool machine not running (stopped,       left alone, or destroyed with ``pool=True``
    created, failed or suspended)
    anything of a run still going              kept, unless ``everything``

A run is going on when the ledger marks it running and its process is alive here. Rows
the ledger thinks alive are brought up to date: gone from Fly means destroyed, a pool
machine found not running (stopped, failed, suspended) means ended.
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
    live_runs,
    stop_left_running,
)
from whisperfarm.ledger import Ledger

log = logging.getLogger("whisperfarm.fly")

ENDED = ("stopped", "failed", "destroyed", "suspended")


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
    live = live_runs(ledger)
    listed = client.list(metadata={"managed_by": "whisperfarm"})
    listed_ids = {m.id for m in listed}
    _catch_up(client, ledger, live, listed)
    held = held_by_live_runs(ledger, client.app, live)
    destroyed: list[str] = []
    kept: list[str] = []
    failed: list[str] = []
    stopped: list[str] = []
    idle: list[str] = []
    unstopped: list[str] = []
    for machine in listed:
        if machine.state == "destroyed":
            continue
        owner = machine.metadata.get("whisperfarm_run")
        if is_pool(machine) and machine.state in NOT_RUNNING:  # failed ones too: no stop
            if pool and (everything or machine.id not in held):
                _destroy(client, ledger, machine, destroyed, failed)
            else:
                idle.append(machine.id)
            continue
        if not everything and owner in live:
            kept.append(machine.id)
        elif is_pool(machine) and not pool:
            if stop_left_running(client, ledger, machine) is None:
                unstopped.append(machine.id)
            else:
                stopped.append(machine.id)
        else:
            _destroy(client, ledger, machine, destroyed, failed)
    for row in ledger.pool_machines(client.app):
        if row["id"] not in listed_ids:
            ledger.forget_pool_machine(row["id"])
    return Reaped(destroyed, kept, failed, stopped, idle, unstopped)


def _catch_up(
    client: MachinesClient, ledger: Ledger, live: set[str], listed: list[Machine]
) -> None:
    """Rows of ended runs that the ledger thinks alive: gone from Fly means destroyed,
    found idle in the pool means stopped. Only this app's: another app's machines are not
    in this listing at all."""
    seen = {m.id: m for m in listed}
    for row in ledger.machines():
        if row["app"] != client.app or row["state"] == "destroyed" or row["run_id"] in live:
            continue
        machine = seen.get(row["id"])
        if machine is None:
            ledger.update_machine(
                row["id"], state="destroyed", error="gone when reaped", run_id=row["run_id"]
            )
        elif (
            row["pool"]
            and row["state"] not in ENDED
            and (
                machine.state in NOT_RUNNING
                or machine.metadata.get("whisperfarm_run") != row["run_id"]
            )
        ):
            state = machine.state if machine.state in ENDED else "stopped"
            ledger.update_machine(
                row["id"], state=state, error=f"found {state} when reaped", run_id=row["run_id"]
            )


def _destroy(
    client: MachinesClient,
    ledger: Ledger,
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
    ledger.update_machine(machine.id, state="destroyed", error="reaped")
    ledger.forget_pool_machine(machine.id)
