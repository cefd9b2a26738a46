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

Backups (stragglers): when a claim finds nothing to hand out, no episode in scope is still
being cut, and a leased chunk has run ``BACKUP_AFTER`` times as long as the scope's done
chunks took per second of audio, the claim may take a backup lease on the one claimed
longest ago (``backup_token``; at most one per chunk, never to its own worker; the
attempt is not bumped). The first result from either lease wins: the chunk is done under
the winner's token and the other lease is fenced off (409 on its heartbeat, audio or
result). A backup that fails or is released just ends, leaving the chunk to its lease; a
chunk that goes back to the queue takes its backup lease with it. A local worker never
backs up another local worker's chunk: the two share this machine's cores.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from whisperfarm.ledger.chunks import _NO_BACKUP, ChunkStore, UnknownChunk
from whisperfarm.ledger.rows import ChunkRecord
from whisperfarm.ledger.shares import Holding, fair_share
from whisperfarm.ledger.workers import WorkerInfo, touch_worker
from whisperfarm.states import ChunkState, EpisodeState
from worker.wire import WorkerKind

# The states as SQL spells them (StrEnums format as their values).
DEAD = ChunkState.DEAD
DONE = ChunkState.DONE
EPISODE_CHUNKING = EpisodeState.CHUNKING
LEASED = ChunkState.LEASED
QUEUED = ChunkState.QUEUED


BACKUP_AFTER = 2.0
"""A chunk is backed up once it has run this many times as long as the scope's done chunks
took for the same audio: a machine that slow is worth racing; one a little slow is not."""


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


# The chunk a backup claim takes (?3: the worker, ?4: now, ?5: the episode ids as JSON,
# ?6: BACKUP_AFTER, ?7: the worker's kind): the leased one claimed longest ago with no
# live backup, held by another worker, running BACKUP_AFTER × as long as done chunks took;
# none while an episode in scope is still being cut (more chunks may come) or before any
# is done; never a local worker's chunk to another local worker (they share the cores,
# so the backup would slow the chunk it races).
_BACKUP_CHUNK = (
    "SELECT id FROM chunks"
    f" WHERE state = '{LEASED}' AND episode_id IN (SELECT value FROM json_each(?5))"
    "  AND (backup_token IS NULL OR backup_expires_at < ?4) AND worker_id != ?3"
    f"  AND NOT (?7 = '{WorkerKind.LOCAL}' AND worker_id IN"
    f"   (SELECT id FROM workers WHERE kind = '{WorkerKind.LOCAL}'))"
    "  AND NOT EXISTS (SELECT 1 FROM episodes"
    f"   WHERE state = '{EPISODE_CHUNKING}' AND id IN (SELECT value FROM json_each(?5)))"
    "  AND ?4 - claimed_at > ?6 * (end - start) * ("
    "   SELECT sum(finished_at - claimed_at) / sum(end - start) FROM chunks"
    f"   WHERE state = '{DONE}' AND episode_id IN (SELECT value FROM json_each(?5)))"
    " ORDER BY claimed_at LIMIT 1"
)


def holds_lease(chunk: ChunkRecord, token: str | bytes) -> bool:
    """Whether ``token`` is a live lease on ``chunk`` (a ledger row): its lease or backup."""
    if chunk["state"] != ChunkState.LEASED:
        return False
    given = token.encode() if isinstance(token, str) else token
    return any(
        held is not None and secrets.compare_digest(held.encode(), given)
        for held in (chunk["lease_token"], chunk.get("backup_token"))
    )


def _job(conn: sqlite3.Connection, row: tuple[Any, ...], token: str, expires: float) -> Job:
    """The job a leased chunk's row (id, episode_id, idx, start, end, attempt, words) is."""
    episode = conn.execute("SELECT model, options FROM episodes WHERE id = ?", (row[1],)).fetchone()
    options = json.loads(episode[1])
    return Job(
        chunk_id=row[0],
        episode_id=row[1],
        idx=row[2],
        start=row[3],
        end=row[4],
        attempt=row[5],
        lease_token=token,
        lease_expires_at=expires,
        model=episode[0],
        options=options,
        word_timestamps=bool(row[6]) or bool(options.get("word_timestamps")),
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
        backups: bool = False,
        limit: int = 1,
        fleet_size: int = 0,
    ) -> Claim:
        """Up to ``limit`` chunks (no more than the worker's fair share of the work left
        among ``fleet_size`` workers or those at work: ``shares.fair_share``), longest first,
        each leased as a claim of one would be (its own attempt and token, so each is
        fenced and heartbeated on its own), in one transaction; with ``backups``, when
        nothing else is left, a backup lease on a straggler (the module's docstring)."""
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
            if limit > 1:
                limit = self._fair_share(conn, worker.id, now, scope, limit, fleet_size)
            while len(jobs) < max(1, limit):
                job = self._lease_next(conn, worker, now, lease_seconds, scope)
                if job is None:
                    break
                jobs.append(job)
            if not jobs and backups:
                backup = self._lease_backup(conn, worker, now, lease_seconds, scope)
                jobs.extend([backup] if backup is not None else [])
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
            return Claim("wait")
        return Claim("done")

    @staticmethod
    def _fair_share(
        conn: sqlite3.Connection, worker_id: str, now: float, scope: str, limit: int, fleet: int
    ) -> int:
        """At most ``limit`` chunks, and no more than this worker's fair share of the work
        left (``shares.fair_share``) among it, the other workers holding live leases in
        scope and the ``fleet`` the run expects."""
        claimable = [
            seconds
            for (seconds,) in conn.execute(
                # CROSS JOIN: each walks the (state, episode_id) index episode by episode
                "SELECT c.end - c.start FROM json_each(?2) AS e CROSS JOIN chunks AS c"
                f" ON c.episode_id = e.value AND (c.state = '{QUEUED}'"
                f"  OR (c.state = '{LEASED}' AND c.lease_expires_at < ?1))",
                (now, scope),
            )
        ]
        holdings = {
            holder: Holding(chunks, audio, claimed_at, busy / decoded if busy > 0 else None)
            for holder, chunks, audio, claimed_at, busy, decoded in conn.execute(
                "SELECT c.worker_id, count(*), sum(c.end - c.start), min(c.claimed_at),"
                "  CASE WHEN w.audio_seconds > 0 THEN w.busy_seconds ELSE 0 END, w.audio_seconds"
                " FROM json_each(?2) AS e CROSS JOIN chunks AS c"
                f" ON c.state = '{LEASED}' AND c.episode_id = e.value"
                "  AND c.lease_expires_at >= ?1"
                " LEFT JOIN workers AS w ON w.id = c.worker_id GROUP BY c.worker_id",
                (now, scope),
            )
        }
        mine = holdings.pop(worker_id, None)
        busy, audio = conn.execute(
            # the run's speed: the workers that have finished chunks in scope
            "SELECT sum(busy_seconds), sum(audio_seconds) FROM workers WHERE busy_seconds > 0"
            " AND id IN (SELECT c.worker_id FROM json_each(?1) AS e CROSS JOIN chunks AS c"
            f"  ON c.state = '{DONE}' AND c.episode_id = e.value)",
            (scope,),
        ).fetchone()
        speed = busy / audio if busy and audio else None
        return fair_share(
            claimable,
            mine,
            list(holdings.values()),
            now=now,
            speed=speed,
            fleet=fleet,
            limit=limit,
        )

    @staticmethod
    def _lease_next(
        conn: sqlite3.Connection, worker: WorkerInfo, now: float, lease_seconds: float, scope: str
    ) -> Job | None:
        """Lease the next claimable chunk (_NEXT_CHUNK) to ``worker``, or None."""
        token = _new_token()
        row = conn.execute(
            f"UPDATE chunks SET state = '{LEASED}', attempt = attempt + 1, lease_token = ?1,"
            f" lease_expires_at = ?2, worker_id = ?3, claimed_at = ?4, {_NO_BACKUP}"
            f" WHERE id = ({_NEXT_CHUNK})"
            " RETURNING id, episode_id, idx, start, end, attempt, words",
            (token, now + lease_seconds, worker.id, now, scope),
        ).fetchone()
        return None if row is None else _job(conn, row, token, now + lease_seconds)

    @staticmethod
    def _lease_backup(
        conn: sqlite3.Connection, worker: WorkerInfo, now: float, lease_seconds: float, scope: str
    ) -> Job | None:
        """A backup lease on the straggler (_BACKUP_CHUNK) for ``worker``, or None."""
        token = _new_token()
        row = conn.execute(
            "UPDATE chunks SET backup_token = ?1, backup_expires_at = ?2,"
            f" backup_worker_id = ?3 WHERE id = ({_BACKUP_CHUNK})"
            " RETURNING id, episode_id, idx, start, end, attempt, words",
            (token, now + lease_seconds, worker.id, now, scope, BACKUP_AFTER, worker.kind),
        ).fetchone()
        return None if row is None else _job(conn, row, token, now + lease_seconds)

    def heartbeat(
        self, chunk_id: int, token: str, *, lease_seconds: float, worker_id: str | None = None
    ) -> float:
        now = self.clock()
        with self._write() as conn:
            row = (
                conn.execute(
                    "UPDATE chunks SET lease_expires_at = max(lease_expires_at, ?)"
                    f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}'"
                    " RETURNING lease_expires_at, worker_id",
                    (now + lease_seconds, chunk_id, token),
                ).fetchone()
                or conn.execute(
                    "UPDATE chunks SET backup_expires_at = max(backup_expires_at, ?)"
                    f" WHERE id = ? AND backup_token = ? AND state = '{LEASED}'"
                    " RETURNING backup_expires_at, backup_worker_id",
                    (now + lease_seconds, chunk_id, token),
                ).fetchone()
            )
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
            # The first result wins, from the lease or its backup; the chunk is then done
            # under the winner's token (and worker), which fences the other off.
            row = (
                conn.execute(
                    f"UPDATE chunks SET state = '{DONE}', finished_at = ?,"
                    f" lease_expires_at = NULL, error = NULL, {_NO_BACKUP}"
                    f" WHERE id = ? AND lease_token = ? AND state = '{LEASED}'"
                    " RETURNING worker_id, end - start",
                    (now, chunk_id, token),
                ).fetchone()
                or conn.execute(
                    f"UPDATE chunks SET state = '{DONE}', finished_at = ?,"
                    " lease_expires_at = NULL, error = NULL, lease_token = backup_token,"
                    f" worker_id = backup_worker_id, {_NO_BACKUP}"
                    f" WHERE id = ? AND backup_token = ? AND state = '{LEASED}'"
                    " RETURNING worker_id, end - start",
                    (now, chunk_id, token),
                ).fetchone()
            )
            if row is None:
                state = conn.execute(
                    "SELECT state, lease_token FROM chunks WHERE id = ?", (chunk_id,)
                ).fetchone()
                if state is None:
                    raise UnknownChunk(chunk_id)
                if state[0] == ChunkState.DONE and state[1] == token:
                    return "duplicate"
                raise LeaseLost(chunk_id)
            # Under the key of the episode's current options: the ones its job was made
            # with (a change of options requeues every leased chunk with a new token).
            conn.execute(
                "INSERT OR REPLACE INTO results (chunk_id, options_key, body) VALUES (?1,"
                " (SELECT e.options_key FROM episodes e JOIN chunks c ON c.episode_id = e.id"
                "  WHERE c.id = ?1), ?2)",
                (chunk_id, result),
            )
            conn.execute(
                "UPDATE workers SET chunks_done = chunks_done + 1, audio_seconds ="
                " audio_seconds + ?, busy_seconds = busy_seconds + ?, current_chunk = NULL,"
                " last_seen = ? WHERE id = ?",
                (row[1], busy_seconds, now, row[0]),
            )
        return "stored"

    def fail(self, chunk_id: int, token: str, *, error: str, max_attempts: int) -> str:
        """A worker gave up on its chunk: back to the queue, or dead at the attempt cap. A
        backup that fails just ends (no attempt spent): the chunk stays with its lease."""
        with self._write() as conn:
            if self._end_backup(conn, chunk_id, token):
                return str(LEASED)
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
        """A worker stopping gracefully hands its chunk back at once, attempt not spent (a
        backup just ends)."""
        with self._write() as conn:
            if self._end_backup(conn, chunk_id, token):
                return
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

    def lease_holder(self, chunk_id: int, token: str) -> ChunkRecord:
        """The chunk, if ``token`` holds its lease (or backup) now; else
        LeaseLost/UnknownChunk."""
        chunk = self.chunk(chunk_id)
        if not holds_lease(chunk, token):
            raise LeaseLost(chunk_id)
        return chunk

    @staticmethod
    def _end_backup(conn: sqlite3.Connection, chunk_id: int, token: str) -> bool:
        """End the backup lease ``token`` holds on the chunk, if it holds one."""
        row = conn.execute(
            f"UPDATE chunks SET {_NO_BACKUP}"
            f" WHERE id = ? AND backup_token = ? AND state = '{LEASED}' RETURNING id",
            (chunk_id, token),
        ).fetchone()
        return row is not None

    @staticmethod
    def _raise_lost(conn: sqlite3.Connection, chunk_id: int) -> None:
        exists = conn.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        raise LeaseLost(chunk_id) if exists else UnknownChunk(chunk_id)
