"""The SQLite ledger: episodes, their chunk jobs, workers, runs and measured speeds.

One ``Ledger`` per thread (SQLite connections are not shared). Every write that must be
atomic (a claim, a completion) runs in one ``BEGIN IMMEDIATE`` transaction; the database is
in WAL mode with a busy timeout, so a status reader never blocks the coordinator.

The package is a few narrow stores over one database, each in its own module and each
writing only its own tables:

    store         the open database: connection, clock, one write at a time, ``reading()``
    chunks        chunks as cut, their stored results, an episode's progress
    queue         claims under leases, heartbeats, completions, failures, releases
    episodes      episodes
    runs          runs and the episodes they took on
    workers       workers heard from
    calibrations  measured speeds
    reads         read-only queries for status, cost and the status page
    rows          the rows the stores return, typed (``EpisodeRecord``, ``ChunkRecord`` …)

The Fly machines and warm pool live in the same database but belong to the Fly layer
(``whisperfarm.fly.store.MachineStore``, made from an open ledger); the migrations that
create every table stay in ``whisperfarm.migrations``.

``Ledger`` is the facade: the stores combined by inheritance, so callers keep writing
``ledger.claim(...)`` and ``ledger.episode(id)``. Chosen over stores as attributes
(``ledger.queue.claim(...)``) because the reads callers use most are already named for
their tables (``ledger.episodes()``, ``ledger.runs()``, ``ledger.workers()``), which
attributes would shadow, and over method-by-method delegation because sixty forwarding
methods would be a second copy of every signature. A store stays usable on its own: each
is a ``Store`` made from an open ledger (``QueueStore(ledger)``), as the Fly store is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlite_utils import Database

from whisperfarm.errors import LedgerError
from whisperfarm.ledger.calibrations import CalibrationStore
from whisperfarm.ledger.chunks import (
    WORDS_GAP,
    ChunkPlan,
    ChunkStore,
    EpisodeProgress,
    UnknownChunk,
)
from whisperfarm.ledger.episodes import EpisodeStore
from whisperfarm.ledger.queue import Claim, Job, LeaseLost, QueueStore, holds_lease
from whisperfarm.ledger.reads import StatusReads
from whisperfarm.ledger.rows import (
    CalibrationRecord,
    ChunkRecord,
    ChunkStateRecord,
    EpisodeRecord,
    JsonValue,
    LeasedChunkRecord,
    MeasuredSpeed,
    RunEpisodeRecord,
    RunRecord,
    WorkerRecord,
)
from whisperfarm.ledger.runs import RunStore
from whisperfarm.ledger.store import Clock, Store, _enable_wal, _write_lock
from whisperfarm.ledger.workers import WorkerInfo, WorkerStore
from whisperfarm.migrations import migrations


class Ledger(
    QueueStore, ChunkStore, EpisodeStore, RunStore, WorkerStore, CalibrationStore, StatusReads
):
    """The ledger at ``path``, opened (and migrated) on construction; ``close()`` when done."""

    def __init__(self, path: Path, *, clock: Clock = time.time):
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock: threading.RLock = _write_lock(self.path)
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self.db = Database(conn)
            if migrations.pending(self.db):
                # Under the write lock, so concurrent first opens apply each migration once
                # (apply re-reads what is pending and nests in savepoints).
                with self._write():
                    migrations.apply(self.db)
        except sqlite3.DatabaseError as error:
            raise LedgerError(
                f"can't open the ledger at {self.path}: {error}; "
                "move it aside or point WHISPERFARM_HOME at another directory"
            ) from error
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    # ``with Ledger(path) as ledger:`` closes it at the end, as sqlite-utils' Database does.
    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "WORDS_GAP",
    "CalibrationRecord",
    "CalibrationStore",
    "ChunkPlan",
    "ChunkRecord",
    "ChunkStateRecord",
    "ChunkStore",
    "Claim",
    "Clock",
    "EpisodeProgress",
    "EpisodeRecord",
    "EpisodeStore",
    "Job",
    "JsonValue",
    "LeaseLost",
    "LeasedChunkRecord",
    "Ledger",
    "MeasuredSpeed",
    "QueueStore",
    "RunEpisodeRecord",
    "RunRecord",
    "RunStore",
    "StatusReads",
    "Store",
    "UnknownChunk",
    "WorkerInfo",
    "WorkerRecord",
    "WorkerStore",
    "holds_lease",
]
