"""The workers the coordinator has heard from (``workers``): who they are, what they did."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from whisperfarm.ledger.rows import WorkerRecord
from whisperfarm.ledger.store import Store
from worker.wire import WorkerKind


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    kind: str = WorkerKind.REMOTE
    host: str | None = None
    machine_id: str | None = None
    region: str | None = None
    threads: int | None = None


def touch_worker(conn: sqlite3.Connection, worker: WorkerInfo, now: float) -> None:
    """A worker heard from: recorded on first contact, its ``last_seen`` moved on."""
    conn.execute(
        "INSERT INTO workers (id, kind, host, machine_id, region, threads, first_seen,"
        " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        (
            worker.id,
            worker.kind,
            worker.host,
            worker.machine_id,
            worker.region,
            worker.threads,
            now,
            now,
        ),
    )


class WorkerStore(Store):
    def workers(self) -> list[WorkerRecord]:
        return cast(list[WorkerRecord], self._rows("SELECT * FROM workers ORDER BY first_seen"))

    def workers_seen(self, worker_ids: Iterable[str]) -> set[str]:
        """Which of these workers have reached the coordinator (claimed at least once)."""
        rows = self.db.conn.execute(
            "SELECT id FROM workers WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(worker_ids)),),
        )
        return {row[0] for row in rows}
