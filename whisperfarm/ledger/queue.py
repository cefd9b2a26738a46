"""The chunk queue: claims under leases, heartbeats, completions, failures, releases.

Chunk states::

    queued ──claim──▶ leased ──complete──▶ done
      ▲                 │  │
      └──fail/release───┘  └──lease expired, attempts left──▶ (claimable again)
                        └──fail or expiry at max attempts──▶ dead

A claim bumps ``attempt`` and hands out a fresh ``lease_token``; heartbeat, complete, fail
and release must present the current token (fencing). Every move is one ``BEGIN
IMMEDIATE`` transaction; time comes from the injected clock. Writes ``chunks``,
``results`` and the worker's counters in ``workers``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from whisperfarm.ledger.chunks import ChunkStore, UnknownChunk
from whisperfarm.ledger.workers import WorkerInfo, touch_worker
from whisperfarm.states import ChunkState, EpisodeState

# The states as SQL spells them (StrEnums format as their values).
DEAD = ChunkState.DEAD
DONE = ChunkState.DONE
EPISODE_CHUNKING = EpisodeState.CHUNKING
LEASED = ChunkState.LEASED
QUEUED = ChunkState.QUEUED


class LeaseLost(Exception):
    """The caller's lease token is not the chunk's current one (superseded or expired)."""


@dataclass(frozen=True)
class Job:
    chunk_id: int
    episode_id: str
    idx: int
    start: float
    end: float
    attempt: int
    lease_token: str
    lease_expires_at: float
    model: str
    options: dict[str, Any]
    word_timestamps: bool


@dataclass(frozen=True)
class Claim:
    """A claim's answer: ``job`` with one or more ``jobs`` (each under its own lease),
    else ``wait`` or ``done``."""

    status: Literal["job", "wait", "done"]
    jobs: tuple[Job, ...] = ()
    retry_after: float = 0.0

    @property
    def job(self) -> Job | None:
        """The first job claimed (the longest), or None."""
        return self.jobs[0] if self.jobs else None


def _new_token() -> str:
    return secrets.token_urlsafe(18)


# The chunk a claim takes (?4: now, ?5: the episode ids as JSON): the longest claimable
# one in scope, queued or with an expired lease; long chunks first keeps a run's tail short.
# The queued one comes from walking the chunks_queue index in that order (no sort of the
# whole queue per claim); leased chunks are few, one per worker.
_NEXT_CHUNK = (
    "SELECT id FROM ("
    " SELECT * FROM (SELECT id, end - start AS length, idx FROM chunks"
    f"  WHERE state = '{QUEUED}' AND episode_id IN (SELECT value FROM json_each(?5))"
    "  ORDER BY end - start DESC, idx LIMIT 1)"
    " UNION ALL SELECT id, end - start, idx FROM chunks"
    f"  WHERE state = '{LEASED}' AND lease_expires_at < ?4"
    "  AND episode_id IN (SELECT value FROM json_each(?5))"
    ") ORDER BY length DESC, idx LIMIT 1"
)


class QueueStore(ChunkStore):
    """The queue reads chunks as the chunk store does (``lease_holder``)."""

    def claim(
        self,
        episode_ids: list[str],
        worker: WorkerInfo,
        *,
        lease_seconds: float,
        max_attempts: int,
        limit: int = 1,
    ) -> Claim:
        """Up to ``limit`` chunks, longest first, each leased as a claim of one would be
        (its own attempt and token, so each is fenced and heartbeated on its own), in
        one transaction."""
        now = self.clock()
        scope = json.dumps(episode_ids)
        with self._write() as conn:
            touch_worker(conn, worker, now)
            conn.execute(
                f"UPDATE chunks SET state = '{DEAD}', lease_token = NULL,"
                " error = coalesce(error, 'lease expired on every attempt (worker lost?)')"
                f" WHERE state = '{LEASED}' AND lease_expires_at < ? AND attempt >= ?"
                " AND episode_id IN (SELECT value FROM json_each(?))",
                (now, max_attempts, scope),
            )
            jobs: list[Job] = []
            while len(jobs) < max(1, limit):
                job = self._lease_next(conn, worker, now, lease_seconds, scope)
                if job is None:
                    break
                jobs.append(job)
            if jobs:
                conn.execute(
                    "UPDATE workers SET current_chunk = ? WHERE id = ?",
                    (jobs[0].chunk_id, worker.id),
                )
                return Claim("job", tuple(jobs))
            pending = conn.execute(
                f"SELECT (SELECT count(*) FROM episodes WHERE state = '{EPISODE_CHUNKING}'"
                "        AND id IN (SELECT value FROM json_each(?)))"
                f"     + (SELECT count(*) FROM chunks WHERE state IN ('{LEASED}', '{QUEUED}')"
                "        AND episode_id IN (SELECT value FROM json_each(?)))",
                (scope, scope),
            ).fetchone()[0]
        if pending:
            return Claim("wait", retry_after=1.0)
        return Claim("done")

    @staticmethod
    def _lease_next(
        conn: sqlite3.Connection, worker: WorkerInfo, now: float, lease_seconds: float, scope: str
    ) -> Job | None:
        """Lease the next claimable chunk (_NEXT_CHUNK) to ``worker``, or None."""
        token = _new_token()
        row = conn.execute(
            f"UPDATE chunks SET state = '{LEASED}', attempt = attempt + 1, lease_token = ?1,"
            " lease_expires_at = ?2, worker_id = ?3, claimed_at = ?4"
            f" WHERE id = ({_NEXT_CHUNK})"
            " RETURNING id, episode_id, idx, start, end, attempt, words",
            (token, now + lease_seconds, worker.id, now, scope),
        ).fetchone()
        if row is None:
            return None
        episode = conn.execute(
            "SELECT model, options FROM episodes WHERE id = ?", (row[1],)
        ).fetchone()
        options = json.loads(episode[1])
        return Job(
            chunk_id=row[0],
            episode_id=row[1],
            idx=row[2],
            start=row[3],
            end=row[4],
            attempt=row[5],
            lease_token=token,
            lease_expires_at=now + lease_seconds,
            model=episode[0],
            options=options,
            word_timestamps=bool(row[6]) or bool(options.get("word_timestamps")),
        )

    def heartbeat(
        self, chunk_id: int, token: str, *, lease_seconds: float, worker_id: str | None = None
    ) -> float:
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE chunks SET lease_expires_at = max(lease_expires_at, ?)"
                f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}'"
                " RETURNING lease_expires_at, worker_id",
                (now + lease_seconds, chunk_id, token),
            ).fetchone()
            if row is None:
                self._raise_lost(conn, chunk_id)
            conn.execute(
                "UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker_id or row[1])
            )
        return float(row[0])

    def complete(
        self,
        chunk_id: int,
        token: str,
        *,
        result: str,
        busy_seconds: float = 0.0,
    ) -> Literal["stored", "duplicate"]:
        """Mark the chunk done and store its result (JSON text) with it, in one commit
        before returning, so a result acknowledged to a worker is never lost. A repeated
        post by the winning attempt is a harmless duplicate; any other token gets
        LeaseLost."""
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE chunks SET state = '{DONE}', finished_at = ?,"
                " lease_expires_at = NULL, error = NULL"
                f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}'"
                " RETURNING worker_id, end - start",
                (now, chunk_id, token),
            ).fetchone()
            if row is None:
                state = conn.execute(
                    "SELECT state, lease_token FROM chunks WHERE id = ?", (chunk_id,)
                ).fetchone()
                if state is None:
                    raise UnknownChunk(chunk_id)
                if state[0] == ChunkState.DONE and state[1] == token:
                    return "duplicate"
                raise LeaseLost(chunk_id)
            conn.execute(
                "INSERT OR REPLACE INTO results (chunk_id, body) VALUES (?, ?)", (chunk_id, result)
            )
            conn.execute(
                "UPDATE workers SET chunks_done = chunks_done + 1, audio_seconds ="
                " audio_seconds + ?, busy_seconds = busy_seconds + ?, current_chunk = NULL,"
                " last_seen = ? WHERE id = ?",
                (row[1], busy_seconds, now, row[0]),
            )
        return "stored"

    def fail(self, chunk_id: int, token: str, *, error: str, max_attempts: int) -> str:
        """A worker gave up on its chunk: back to the queue, or dead at the attempt cap."""
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE chunks SET state = CASE WHEN attempt >= ? THEN '{DEAD}'"
                f" ELSE '{QUEUED}' END,"
                " lease_token = NULL, lease_expires_at = NULL, error = ?"
                f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}'"
                " RETURNING state, worker_id",
                (max_attempts, error[:2000], chunk_id, token),
            ).fetchone()
            if row is None:
                self._raise_lost(conn, chunk_id)
            conn.execute("UPDATE workers SET current_chunk = NULL WHERE id = ?", (row[1],))
        return str(row[0])

    def release(self, chunk_id: int, token: str) -> None:
        """A worker stopping gracefully hands its chunk back at once, attempt not spent."""
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE chunks SET state = '{QUEUED}', attempt = max(attempt - 1, 0),"
                " lease_token = NULL, lease_expires_at = NULL"
                f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}' RETURNING worker_id",
                (chunk_id, token),
            ).fetchone()
            if row is None:
                self._raise_lost(conn, chunk_id)
            conn.execute("UPDATE workers SET current_chunk = NULL WHERE id = ?", (row[0],))

    def release_leases(self, worker_ids: list[str], *, count_attempt: bool = False) -> int:
        """Hand back every chunk these (gone) workers still hold. The attempt is not spent
        when we stopped them; it is when they died on their own (a chunk that kills its
        worker every time must still end dead)."""
        if not worker_ids:
            return 0
        refund = 0 if count_attempt else 1
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE chunks SET state = '{QUEUED}', attempt = max(attempt - ?, 0),"
                " lease_token = NULL, lease_expires_at = NULL"
                f" WHERE state = '{LEASED}' AND worker_id IN (SELECT value FROM json_each(?))",
                (refund, json.dumps(worker_ids)),
            )
            conn.execute(
                "UPDATE workers SET current_chunk = NULL"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(worker_ids),),
            )
            return cursor.rowcount

    def lease_holder(self, chunk_id: int, token: str) -> dict[str, Any]:
        """The chunk, if ``token`` holds its lease now; else LeaseLost/UnknownChunk."""
        chunk = self.chunk(chunk_id)
        if chunk["state"] != ChunkState.LEASED or chunk["lease_token"] != token:
            raise LeaseLost(chunk_id)
        return chunk

    @staticmethod
    def _raise_lost(conn: sqlite3.Connection, chunk_id: int) -> None:
        exists = conn.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        raise LeaseLost(chunk_id) if exists else UnknownChunk(chunk_id)
