"""Reading a ledger the way another process sees it: plain sqlite3, no Ledger class, so an
end-to-end test checks what the run really wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

DONE_WITH_RESULTS = (
    "SELECT c.idx, c.attempt, c.finished_at, r.body FROM chunks c"
    " JOIN results r ON r.chunk_id = c.id"
)
"""Finished chunks with their results: a chunk transcribed again changes its row."""


def rows(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from the ledger in ``home``."""
    with sqlite3.connect(home / "ledger.db", timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def count(home: Path, sql: str) -> int:
    """A count from a run's ledger while it goes: 0 before the ledger has its tables."""
    if not (home / "ledger.db").exists():
        return 0
    try:
        return int(rows(home, sql)[0][0])
    except sqlite3.OperationalError:  # created, not migrated yet
        return 0


def integrity(home: Path) -> str:
    """SQLite's own check of the ledger file: "ok" when it is whole."""
    return str(rows(home, "PRAGMA integrity_check")[0][0])
