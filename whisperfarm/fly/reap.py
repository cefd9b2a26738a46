"""``whisperfarm machines reap``: clean up the machines whisperfarm left on Fly.

Found by their metadata (``managed_by=whisperfarm``), whatever the ledger knows:

    a run's machine, run not going on          destroyed
    a pool machine running, run not going on   stopped (back in the pool), or destroyed
                                               with ``pool=True``
    a pool machine stopped (idle in the pool)  left alone, or destroyed with ``pool=True``
    anything of a run still going              kept, unless ``everything``

A run is going on when the ledger marks it running and its process is alive here. Rows
the ledger thinks alive are brought up to date: gone from Fly means destroyed, a pool
machine found stopped means stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from whisperfarm.errors import FlyError
from whisperfarm.fly.client import Machine, MachinesClient
from whisperfarm.fly.pool import IDLE, held_by_live_runs, is_pool, live_runs
from whisperfarm.ledger import Ledger

log = logging.getLogger("whisperfarm.fly")

ENDED = ("stopped", "failed", "destroyed", "suspended")
STOP_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Reaped:
    destroyed: list[str]
    kept: list[str]  # machines of runs still going
    failed: list[str]
    stopped: list[str] = field(default_factory=list)  # pool machines put back in the pool
    idle: list[str] = field(default_factory=list)  # stopped pool machines left alone


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
    for machine in listed:
        if machine.state == "destroyed":
            continue
        owner = machine.metadata.get("whisperfarm_run")
        if is_pool(machine) and machine.state in IDLE:
            if pool and (everything or machine.id not in held):
                _destroy(client, ledger, machine, destroyed, failed)
            else:
                idle.append(machine.id)
            continue
        if not everything and owner in live:
            kept.append(machine.id)
        elif is_pool(machine) and not pool:
            _stop(client, ledger, machine, stopped, failed)
        else:
            _destroy(client, ledger, machine, destroyed, failed)
    for row in ledger.pool_machines(client.app):
        if row["id"] not in listed_ids:
            ledger.forget_pool_machine(row["id"])
    return Reaped(destroyed, kept, failed, stopped, idle)


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
            and (machine.state in IDLE or machine.metadata.get("whisperfarm_run") != row["run_id"])
        ):
            ledger.update_machine(
                row["id"], state="stopped", error="found stopped when reaped", run_id=row["run_id"]
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


def _stop(
    client: MachinesClient,
    ledger: Ledger,
    machine: Machine,
    stopped: list[str],
    failed: list[str],
) -> None:
    """Stop a pool machine left running and wait until it is: it bills until then."""
    owner = machine.metadata.get("whisperfarm_run")
    try:
        client.stop(machine.id, signal="SIGTERM")
        client.wait(machine.id, "stopped", timeout=STOP_WAIT_SECONDS)
    except FlyError as error:
        log.warning("could not stop %s: %s", machine.id, error)
        failed.append(machine.id)
        return
    stopped.append(machine.id)
    if owner:
        ledger.update_machine(machine.id, state="stopped", error="reaped", run_id=owner)
        ledger.release_pool_machine(machine.id, owner, state="stopped")
    ledger.update_pool_machine(machine.id, state="stopped")
