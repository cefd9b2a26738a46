"""The ledger's database, opened once and shared by every store over it.

``Store`` is what each narrow store (``queue``, ``episodes``, ``runs`` …) is written
against: the connection, the injected clock and one write transaction at a time. ``Ledger``
opens the database (applying pending migrations); a store outside this package, such as
the Fly layer's ``MachineStore``, is made from an open ledger and shares its connection and
write lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

Clock = Callable[[], float]


def _enable_wal(conn: sqlite3.Connection, attempts: int = 50) -> None:
    """Switching a new database to WAL can answer "locked" at once, without waiting for the
    busy timeout, while another connection creates it: try again briefly."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


_write_locks: dict[Path, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(path: Path) -> threading.RLock:
    """One lock per ledger file for this process's writers. SQLite's busy handler makes a
    writer that finds the database locked sleep (1 ms, 2 ms, … up to 100 ms) before trying
    again, so threads of one process queueing on the lock among themselves hand it over at
    once instead; other processes still wait through the busy timeout."""
    with _write_locks_guard:
        return _write_locks.setdefault(path.resolve(), threading.RLock())


class Store:
    """A view of one open ledger database. Made from another store (often the ``Ledger``),
    it shares that one's connection, clock and write lock: one ``Ledger`` per thread, as
    SQLite connections are not shared, and every store over it in the same thread."""

    path: Path
    clock: Clock
    db: Database
    conn: sqlite3.Connection
    _lock: threading.RLock

    def __init__(self, ledger: Store):
        self.path = ledger.path
        self.clock = ledger.clock
        self.db = ledger.db
        self.conn = ledger.conn
        self._lock = ledger._lock

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue, not deadlock."""
        conn = self.db.conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.db.conn.execute(sql, tuple(params))
        names = [col[0] for col in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same committed state (WAL),
        so a status snapshot never mixes before and after a concurrent write."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")
