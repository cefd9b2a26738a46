"""The Fly layer's tables in the ledger database: the machines each run started
(``machines``, one row per machine per run) and the warm pool (``pool_machines``, stopped
machines kept for runs to start; ``whisperfarm machines warm``).

``MachineStore`` is made from an open ``Ledger`` and shares its connection, clock and write
lock; the core ledger knows nothing of these tables (their migrations stay with every
other table's, in ``whisperfarm.migrations``, since applied migrations are never edited).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TypedDict, cast

from whisperfarm.ledger.store import Store
from whisperfarm.money import machines_cost
from whisperfarm.states import MACHINE_ENDED, MachineState


class MachineRecord(TypedDict):
    """A ``machines`` row: one machine as one run used it."""

    id: str
    run_id: str
    name: str
    app: str
    region: str | None
    size: str
    cpus: int
    memory_mb: int
    usd_per_second: float
    state: str
    created_at: float
    started_at: float | None
    stopped_at: float | None
    destroyed_at: float | None
    updated_at: float
    error: str | None
    pool: int  # 1: a warm-pool machine the run started (stopped after), 0: one it created


class PoolMachineRecord(TypedDict):
    """A ``pool_machines`` row; ``run_id`` is the run holding it now, if any."""

    id: str
    app: str
    name: str
    region: str | None
    size: str
    image: str
    state: str
    run_id: str | None
    created_at: float
    updated_at: float


class MachineStore(Store):
    # Machines of runs --------------------------------------------------------------------

    def record_machine(
        self,
        *,
        machine_id: str,
        run_id: str,
        name: str,
        app: str,
        region: str | None,
        size: str,
        cpus: int,
        memory_mb: int,
        usd_per_second: float,
        state: str,
        created_at: float | None = None,
        pool: bool = False,
    ) -> None:
        """A machine just created for the run, or a pool machine (``pool``) it is about to
        start: one row per machine per run. It bills from ``created_at`` (default now): a
        created machine starts at once, so pass the time the create (or the pool machine's
        update) was asked for when it is recorded later, to keep the spend conservative."""
        now = self.clock()
        since = now if created_at is None else min(created_at, now)
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO machines (id, run_id, name, app, region, size, cpus,"
                " memory_mb, usd_per_second, state, created_at, started_at, updated_at, pool)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    machine_id,
                    run_id,
                    name,
                    app,
                    region,
                    size,
                    cpus,
                    memory_mb,
                    usd_per_second,
                    state,
                    since,
                    since,
                    now,
                    int(pool),
                ),
            )

    def update_machine(
        self,
        machine_id: str,
        *,
        state: str,
        error: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """A state seen for the machine (in ``run_id``'s row, else in every row of it: a
        pool machine has one per run that used it). Its bill ends the first time it is
        seen stopped, failed or destroyed."""
        now = self.clock()
        ended = state in MACHINE_ENDED
        with self._write() as conn:
            conn.execute(
                "UPDATE machines SET state = ?, updated_at = ?, error = coalesce(?, error),"
                " stopped_at = CASE WHEN ? AND stopped_at IS NULL THEN ? ELSE stopped_at END,"
                f" destroyed_at = CASE WHEN ? = '{MachineState.DESTROYED}' AND destroyed_at IS NULL"
                "   THEN ? ELSE destroyed_at END"
                " WHERE id = ? AND (? IS NULL OR run_id = ?)",
                (state, now, error, ended, now, state, now, machine_id, run_id, run_id),
            )

    def reopen_machine(self, machine_id: str, run_id: str, *, state: str) -> None:
        """A pool machine seen stopped runs again for ``run_id``: it bills again. Its row
        keeps one interval, so the time it lay stopped is billed too (a few seconds when a
        start took after all): conservative, as the budget wants."""
        with self._write() as conn:
            conn.execute(
                "UPDATE machines SET state = ?, updated_at = ?, stopped_at = NULL"
                " WHERE id = ? AND run_id = ? AND destroyed_at IS NULL",
                (state, self.clock(), machine_id, run_id),
            )

    def machines(self, run_id: str | None = None) -> list[MachineRecord]:
        if run_id is None:
            rows = self._rows("SELECT * FROM machines ORDER BY created_at")
        else:
            rows = self._rows(
                "SELECT * FROM machines WHERE run_id = ? ORDER BY created_at", (run_id,)
            )
        return cast(list[MachineRecord], rows)

    def machines_of_runs(self, run_ids: list[str]) -> list[MachineRecord]:
        """The Fly machines of these runs, in the order they were created."""
        return cast(
            list[MachineRecord],
            self._rows(
                "SELECT * FROM machines WHERE run_id IN (SELECT value FROM json_each(?))"
                " ORDER BY created_at, id",
                (json.dumps(run_ids),),
            ),
        )

    def spend(self, run_id: str | None = None) -> float:
        """Dollars billed so far by the run's machines (or every machine), counting a
        running machine up to now."""
        now = self.clock()
        return machines_cost(self.machines(run_id), now)

    # The warm pool -------------------------------------------------------------------------

    def record_pool_machine(
        self,
        *,
        machine_id: str,
        app: str,
        name: str,
        region: str | None,
        size: str,
        image: str,
        state: str,
    ) -> None:
        """A pool machine seen on Fly: added, or its details refreshed (its holder kept)."""
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO pool_machines (id, app, name, region, size, image, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET app = excluded.app, name = excluded.name,"
                " region = excluded.region, size = excluded.size, image = excluded.image,"
                " state = excluded.state, updated_at = excluded.updated_at",
                (machine_id, app, name, region, size, image, state, now, now),
            )

    def pool_machines(self, app: str | None = None) -> list[PoolMachineRecord]:
        if app is None:
            rows = self._rows("SELECT * FROM pool_machines ORDER BY created_at, name")
        else:
            rows = self._rows(
                "SELECT * FROM pool_machines WHERE app = ? ORDER BY created_at, name", (app,)
            )
        return cast(list[PoolMachineRecord], rows)

    def update_pool_machine(self, machine_id: str, *, state: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE pool_machines SET state = ?, updated_at = ? WHERE id = ?",
                (state, self.clock(), machine_id),
            )

    def forget_pool_machine(self, machine_id: str) -> None:
        """A pool machine destroyed: it leaves the pool (its runs' rows stay)."""
        with self._write() as conn:
            conn.execute("DELETE FROM pool_machines WHERE id = ?", (machine_id,))

    def hold_pool_machine(self, machine_id: str, run_id: str, *, live_runs: Iterable[str]) -> bool:
        """Take a pool machine for ``run_id`` unless a run in ``live_runs`` holds it: one
        write, so two runs sharing this ledger never start the same machine."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE pool_machines SET run_id = ?, updated_at = ? WHERE id = ?"
                " AND (run_id IS NULL OR run_id NOT IN (SELECT value FROM json_each(?)))",
                (run_id, self.clock(), machine_id, json.dumps(sorted(set(live_runs)))),
            )
            return cursor.rowcount == 1

    def release_pool_machine(self, machine_id: str, run_id: str, *, state: str) -> None:
        """The run is done with its pool machine, last seen in ``state``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE pool_machines SET run_id = NULL, state = ?, updated_at = ?"
                " WHERE id = ? AND run_id = ?",
                (state, self.clock(), machine_id, run_id),
            )


def from_pool(row: MachineRecord) -> bool:
    """A warm-pool machine the run started, stopped when the run is done with it (back in
    the pool, never destroyed); else one the run created, destroyed when done."""
    return bool(row["pool"])


def machine_done(row: MachineRecord) -> bool:
    """Done with its run: a created machine destroyed, a pool machine stopped (back in the
    pool; any ended state will do, as Fly bills it no CPU or RAM)."""
    if from_pool(row):
        return row["state"] in MACHINE_ENDED
    return row["state"] == MachineState.DESTROYED
