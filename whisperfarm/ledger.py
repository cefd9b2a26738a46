"""The SQLite ledger: episodes, their chunk jobs, workers and runs.

One ``Ledger`` per thread (SQLite connections are not shared). Every write that must be
atomic (a claim, a completion) runs in one ``BEGIN IMMEDIATE`` transaction; the database is
in WAL mode with a busy timeout, so a status reader never blocks the coordinator.

Chunk states::

    queued ──claim──▶ leased ──complete──▶ done
      ▲                 │  │
      └──fail/release───┘  └──lease expired, attempts left──▶ (claimable again)
                        └──fail or expiry at max attempts──▶ dead

A claim bumps ``attempt`` and hands out a fresh ``lease_token``; heartbeat, complete, fail
and release must present the current token (fencing). Time comes from the injected clock.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from whisperfarm.errors import EpisodeNotFound, LedgerError
from whisperfarm.migrations import migrations

Clock = Callable[[], float]


class LeaseLost(Exception):
    """The caller's lease token is not the chunk's current one (superseded or expired)."""


class UnknownChunk(Exception):
    """No chunk with that id."""


WORDS_GAP = 2.0  # seconds without speech in a chunk that make its words worth timing


@dataclass(frozen=True)
class ChunkPlan:
    """One cut of an episode: ``start``/``end`` is the audio sent to the worker and
    ``keep_start``/``keep_end`` the part of the timeline this chunk owns in the transcript
    (they differ only where a cut had no pause and the chunks overlap). ``speech_spans``:
    where the speech model hears speech in the chunk (seconds on the episode timeline),
    None when it was cut without one."""

    idx: int
    start: float
    end: float
    keep_start: float
    keep_end: float
    speech: bool = True
    speech_spans: tuple[tuple[float, float], ...] | None = None

    @property
    def overlaps(self) -> bool:
        return self.start < self.keep_start or self.end > self.keep_end

    @property
    def needs_words(self) -> bool:
        """Word timestamps are needed to join an overlapped seam word by word, and to drop
        the words Whisper places where nobody speaks: in a chunk whose speech spans leave
        WORDS_GAP seconds or more without speech."""
        if self.overlaps:
            return True
        if self.speech_spans is None:
            return False
        edges = [self.start, *(t for span in self.speech_spans for t in span), self.end]
        return any(b - a >= WORDS_GAP for a, b in zip(edges[::2], edges[1::2], strict=True))


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
    status: Literal["job", "wait", "done"]
    job: Job | None = None
    retry_after: float = 0.0


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    kind: str = "remote"
    host: str | None = None
    machine_id: str | None = None
    region: str | None = None
    threads: int | None = None


@dataclass
class EpisodeProgress:
    episode_id: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    audio_total: float = 0.0
    audio_done: float = 0.0

    @property
    def done(self) -> int:
        return self.counts.get("done", 0)

    @property
    def dead(self) -> int:
        return self.counts.get("dead", 0)

    @property
    def finished(self) -> bool:
        """Every chunk is done or dead (chunking must also be complete: see Ledger)."""
        return self.total > 0 and self.done + self.dead == self.total


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


def _new_token() -> str:
    return secrets.token_urlsafe(18)


# The chunk a claim takes (?4: now, ?5: the episode ids as JSON): the longest claimable
# one in scope, queued or with an expired lease; long chunks first keeps a run's tail short.
# The queued one comes from walking the chunks_queue index in that order (no sort of the
# whole queue per claim); leased chunks are few, one per worker.
_NEXT_CHUNK = (
    "SELECT id FROM ("
    " SELECT * FROM (SELECT id, end - start AS length, idx FROM chunks"
    "  WHERE state = 'queued' AND episode_id IN (SELECT value FROM json_each(?5))"
    "  ORDER BY end - start DESC, idx LIMIT 1)"
    " UNION ALL SELECT id, end - start, idx FROM chunks"
    "  WHERE state = 'leased' AND lease_expires_at < ?4"
    "  AND episode_id IN (SELECT value FROM json_each(?5))"
    ") ORDER BY length DESC, idx LIMIT 1"
)

_write_locks: dict[Path, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(path: Path) -> threading.RLock:
    """One lock per ledger file for this process's writers. SQLite's busy handler makes a
    writer that finds the database locked sleep (1 ms, 2 ms, … up to 100 ms) before trying
    again, so threads of one process queueing on the lock among themselves hand it over at
    once instead; other processes still wait through the busy timeout."""
    with _write_locks_guard:
        return _write_locks.setdefault(path.resolve(), threading.RLock())


class Ledger:
    def __init__(self, path: Path, *, clock: Clock = time.time):
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _write_lock(self.path)
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

    # Episodes -------------------------------------------------------------------------

    def find_episode(self, content_hash: str, model: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT * FROM episodes WHERE content_hash = ? AND model = ?", (content_hash, model)
        )
        return rows[0] if rows else None

    def create_episode(
        self,
        *,
        episode_id: str,
        name: str,
        source: str,
        content_hash: str,
        model: str,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO episodes (id, name, source, content_hash, model, options, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'chunking', ?, ?)",
                (episode_id, name, source, content_hash, model, json.dumps(options), now, now),
            )
        return self.episode(episode_id)

    def episode(self, episode_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM episodes WHERE id = ?", (episode_id,))
        if not rows:
            raise EpisodeNotFound(
                f"no episode {episode_id!r}: 'whisperfarm episodes' lists what the ledger holds"
            )
        return rows[0]

    def find_episodes(self, ref: str) -> list[dict[str, Any]]:
        """Episodes whose id starts with ``ref`` or whose name is ``ref``."""
        if not ref:
            return []
        return self._rows(
            "SELECT * FROM episodes WHERE substr(id, 1, ?) = ? OR name = ? ORDER BY created_at",
            (len(ref), ref, ref),
        )

    def episodes(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM episodes ORDER BY created_at")

    def update_episode(self, episode_id: str, **fields: Any) -> None:
        fields["updated_at"] = self.clock()
        if "options" in fields and not isinstance(fields["options"], str):
            fields["options"] = json.dumps(fields["options"])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as conn:
            conn.execute(
                f"UPDATE episodes SET {assignments} WHERE id = ?",
                (*fields.values(), episode_id),
            )

    def delete_episode(self, episode_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM results WHERE chunk_id IN"
                " (SELECT id FROM chunks WHERE episode_id = ?)",
                (episode_id,),
            )
            conn.execute("DELETE FROM chunks WHERE episode_id = ?", (episode_id,))
            conn.execute("DELETE FROM run_episodes WHERE episode_id = ?", (episode_id,))
            conn.execute("DELETE FROM episodes WHERE id = ?", (episode_id,))

    # Chunks ---------------------------------------------------------------------------

    def add_chunk(self, episode_id: str, plan: ChunkPlan, audio_path: str) -> bool:
        """Record one planned chunk. A finished chunk with the same cut is kept as it is
        (resume); anything else is (re)queued. Returns True when the chunk needs work."""
        now = self.clock()
        with self._write() as conn:
            existing = conn.execute(
                "SELECT start, end, state FROM chunks WHERE episode_id = ? AND idx = ?",
                (episode_id, plan.idx),
            ).fetchone()
            same_cut = (
                existing is not None
                and abs(existing[0] - plan.start) < 1e-3
                and abs(existing[1] - plan.end) < 1e-3
            )
            if same_cut and existing[2] in ("done", "leased", "queued"):
                # Kept as it is: finished work stays finished, and a worker holding the
                # lease keeps a valid chunk id.
                return existing[2] != "done"
            state = "queued" if plan.speech else "done"
            if existing is not None:  # a new cut: the old one's result is no use
                conn.execute(
                    "DELETE FROM results WHERE chunk_id IN"
                    " (SELECT id FROM chunks WHERE episode_id = ? AND idx = ?)",
                    (episode_id, plan.idx),
                )
            conn.execute(
                "INSERT OR REPLACE INTO chunks (episode_id, idx, start, end, keep_start,"
                " keep_end, speech, words, audio_path, state, attempt, finished_at,"
                " speech_spans) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    episode_id,
                    plan.idx,
                    plan.start,
                    plan.end,
                    plan.keep_start,
                    plan.keep_end,
                    int(plan.speech),
                    int(plan.needs_words),
                    audio_path,
                    state,
                    None if plan.speech else now,
                    None if plan.speech_spans is None else json.dumps(plan.speech_spans),
                ),
            )
        return plan.speech

    def finish_chunking(self, episode_id: str, *, duration: float, chunk_count: int) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM chunks WHERE episode_id = ? AND idx >= ?", (episode_id, chunk_count)
            )
            conn.execute(
                "UPDATE episodes SET state = 'queued', duration = ?, chunk_count = ?,"
                " error = NULL, updated_at = ? WHERE id = ?",
                (duration, chunk_count, self.clock(), episode_id),
            )

    def chunks(self, episode_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM chunks WHERE episode_id = ? ORDER BY idx", (episode_id,))

    def result(self, chunk_id: int) -> dict[str, Any] | None:
        """A done chunk's result (segments, language …), None if it has none."""
        row = self.conn.execute(
            "SELECT body FROM results WHERE chunk_id = ?", (chunk_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def results(self, episode_id: str) -> dict[int, dict[str, Any]]:
        """The episode's stored results by chunk id."""
        rows = self.conn.execute(
            "SELECT r.chunk_id, r.body FROM results r JOIN chunks c ON c.id = r.chunk_id"
            " WHERE c.episode_id = ?",
            (episode_id,),
        )
        return {chunk_id: json.loads(body) for chunk_id, body in rows}

    def missing_results(self, episode_id: str) -> list[dict[str, Any]]:
        """Chunks marked done with speech but no stored result: only a ledger from before
        results moved into it, whose result file was gone, has any."""
        return self._rows(
            "SELECT * FROM chunks WHERE episode_id = ? AND state = 'done' AND speech = 1"
            " AND id NOT IN (SELECT chunk_id FROM results) ORDER BY idx",
            (episode_id,),
        )

    def chunk(self, chunk_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM chunks WHERE id = ?", (chunk_id,))
        if not rows:
            raise UnknownChunk(chunk_id)
        return rows[0]

    def requeue(self, episode_id: str, *, states: tuple[str, ...] = ("leased", "dead")) -> int:
        """Put unfinished chunks back in the queue (resume after a crash, retry dead ones)."""
        marks = ", ".join("?" for _ in states)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE chunks SET state = 'queued', attempt = 0, lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL"
                f" WHERE episode_id = ? AND state IN ({marks})",
                (episode_id, *states),
            )
            return cursor.rowcount

    # The queue ------------------------------------------------------------------------

    def claim(
        self,
        episode_ids: list[str],
        worker: WorkerInfo,
        *,
        lease_seconds: float,
        max_attempts: int,
    ) -> Claim:
        now = self.clock()
        scope = json.dumps(episode_ids)
        token = _new_token()
        with self._write() as conn:
            self._touch_worker(conn, worker, now)
            conn.execute(
                "UPDATE chunks SET state = 'dead', lease_token = NULL,"
                " error = coalesce(error, 'lease expired on every attempt (worker lost?)')"
                " WHERE state = 'leased' AND lease_expires_at < ? AND attempt >= ?"
                " AND episode_id IN (SELECT value FROM json_each(?))",
                (now, max_attempts, scope),
            )
            row = conn.execute(
                "UPDATE chunks SET state = 'leased', attempt = attempt + 1, lease_token = ?1,"
                " lease_expires_at = ?2, worker_id = ?3, claimed_at = ?4"
                f" WHERE id = ({_NEXT_CHUNK})"
                " RETURNING id, episode_id, idx, start, end, attempt, words",
                (token, now + lease_seconds, worker.id, now, scope),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE workers SET current_chunk = ? WHERE id = ?", (row[0], worker.id)
                )
                episode = conn.execute(
                    "SELECT model, options FROM episodes WHERE id = ?", (row[1],)
                ).fetchone()
                options = json.loads(episode[1])
                job = Job(
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
                return Claim("job", job)
            pending = conn.execute(
                "SELECT (SELECT count(*) FROM episodes WHERE state = 'chunking'"
                "        AND id IN (SELECT value FROM json_each(?)))"
                "     + (SELECT count(*) FROM chunks WHERE state IN ('leased', 'queued')"
                "        AND episode_id IN (SELECT value FROM json_each(?)))",
                (scope, scope),
            ).fetchone()[0]
        if pending:
            return Claim("wait", retry_after=1.0)
        return Claim("done")

    def heartbeat(
        self, chunk_id: int, token: str, *, lease_seconds: float, worker_id: str | None = None
    ) -> float:
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE chunks SET lease_expires_at = max(lease_expires_at, ?)"
                " WHERE id = ? AND lease_token = ? AND state = 'leased'"
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
                "UPDATE chunks SET state = 'done', finished_at = ?,"
                " lease_expires_at = NULL, error = NULL"
                " WHERE id = ? AND lease_token = ? AND state = 'leased'"
                " RETURNING worker_id, end - start",
                (now, chunk_id, token),
            ).fetchone()
            if row is None:
                state = conn.execute(
                    "SELECT state, lease_token FROM chunks WHERE id = ?", (chunk_id,)
                ).fetchone()
                if state is None:
                    raise UnknownChunk(chunk_id)
                if state[0] == "done" and state[1] == token:
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
                "UPDATE chunks SET state = CASE WHEN attempt >= ? THEN 'dead' ELSE 'queued' END,"
                " lease_token = NULL, lease_expires_at = NULL, error = ?"
                " WHERE id = ? AND lease_token = ? AND state = 'leased'"
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
                "UPDATE chunks SET state = 'queued', attempt = max(attempt - 1, 0),"
                " lease_token = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND lease_token = ? AND state = 'leased' RETURNING worker_id",
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
                "UPDATE chunks SET state = 'queued', attempt = max(attempt - ?, 0),"
                " lease_token = NULL, lease_expires_at = NULL"
                " WHERE state = 'leased' AND worker_id IN (SELECT value FROM json_each(?))",
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
        if chunk["state"] != "leased" or chunk["lease_token"] != token:
            raise LeaseLost(chunk_id)
        return chunk

    @staticmethod
    def _raise_lost(conn: sqlite3.Connection, chunk_id: int) -> None:
        exists = conn.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        raise LeaseLost(chunk_id) if exists else UnknownChunk(chunk_id)

    @staticmethod
    def _touch_worker(conn: sqlite3.Connection, worker: WorkerInfo, now: float) -> None:
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

    # Progress -------------------------------------------------------------------------

    def progress(self, episode_id: str) -> EpisodeProgress:
        progress = EpisodeProgress(episode_id)
        for state, count, seconds in self.db.conn.execute(
            "SELECT state, count(*), sum(end - start) FROM chunks WHERE episode_id = ?"
            " GROUP BY state",
            (episode_id,),
        ):
            progress.counts[state] = count
            progress.total += count
            progress.audio_total += seconds or 0.0
            if state == "done":
                progress.audio_done += seconds or 0.0
        return progress

    def work_left(self, episode_ids: list[str]) -> tuple[float, int]:
        """(seconds of audio, chunks) still to transcribe. For an episode still being cut,
        the part not yet cut counts by its declared duration, in 25-second chunks."""
        audio, chunks = 0.0, 0
        for episode_id in episode_ids:
            episode = self.episode(episode_id)
            if episode["state"] in ("done", "failed"):
                continue
            row = self.db.conn.execute(
                "SELECT coalesce(sum(CASE WHEN state IN ('queued', 'leased') THEN end - start"
                " END), 0), count(CASE WHEN state IN ('queued', 'leased') THEN 1 END),"
                " coalesce(max(keep_end), 0) FROM chunks WHERE episode_id = ?",
                (episode_id,),
            ).fetchone()
            audio += row[0]
            chunks += row[1]
            if episode["state"] == "chunking" and episode["duration"]:
                uncut = max(0.0, episode["duration"] - row[2])
                audio += uncut
                chunks += int(uncut // 25) + (1 if uncut % 25 else 0)
        return audio, chunks

    def chunk_counts(self, episode_ids: list[str]) -> tuple[int, int]:
        """(done, total) chunks over these episodes."""
        row = self.db.conn.execute(
            "SELECT count(CASE WHEN state = 'done' THEN 1 END), count(*) FROM chunks"
            " WHERE episode_id IN (SELECT value FROM json_each(?))",
            (json.dumps(episode_ids),),
        ).fetchone()
        return int(row[0]), int(row[1])

    def workers(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM workers ORDER BY first_seen")

    def workers_seen(self, worker_ids: Iterable[str]) -> set[str]:
        """Which of these workers have reached the coordinator (claimed at least once)."""
        rows = self.db.conn.execute(
            "SELECT id FROM workers WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(worker_ids)),),
        )
        return {row[0] for row in rows}

    # Runs -----------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        backend: str,
        episode_ids: list[str],
        url: str | None = None,
        pid: int | None = None,
        budget: float | None = None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, backend, url, pid, budget, started_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (run_id, backend, url, pid, budget, self.clock()),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO run_episodes (run_id, episode_id) VALUES (?, ?)",
                [(run_id, episode_id) for episode_id in episode_ids],
            )

    def set_run_url(self, run_id: str, url: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET url = ? WHERE id = ?", (url, run_id))

    def running_runs(self, episode_ids: list[str]) -> list[dict[str, Any]]:
        """Runs marked running that include any of these episodes."""
        return self._rows(
            "SELECT DISTINCT r.* FROM runs r JOIN run_episodes e ON e.run_id = r.id"
            " WHERE r.state = 'running' AND e.episode_id IN (SELECT value FROM json_each(?))",
            (json.dumps(episode_ids),),
        )

    # Machines --------------------------------------------------------------------------

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
        ended = state in ("stopped", "failed", "destroyed", "suspended")
        with self._write() as conn:
            conn.execute(
                "UPDATE machines SET state = ?, updated_at = ?, error = coalesce(?, error),"
                " stopped_at = CASE WHEN ? AND stopped_at IS NULL THEN ? ELSE stopped_at END,"
                " destroyed_at = CASE WHEN ? = 'destroyed' AND destroyed_at IS NULL"
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

    def machines(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is None:
            return self._rows("SELECT * FROM machines ORDER BY created_at")
        return self._rows("SELECT * FROM machines WHERE run_id = ? ORDER BY created_at", (run_id,))

    # The warm pool: stopped machines kept for runs to start (``whisperfarm machines warm``).
    # ``run_id`` is the run holding one now, if any.

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

    def pool_machines(self, app: str | None = None) -> list[dict[str, Any]]:
        if app is None:
            return self._rows("SELECT * FROM pool_machines ORDER BY created_at, name")
        return self._rows(
            "SELECT * FROM pool_machines WHERE app = ? ORDER BY created_at, name", (app,)
        )

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

    def spend(self, run_id: str | None = None) -> float:
        """Dollars billed so far by the run's machines (or every machine), counting a
        running machine up to now."""
        now = self.clock()
        return sum(machine_cost(row, now) for row in self.machines(run_id))

    def runs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM runs ORDER BY started_at")

    def run_episodes(self, run_id: str) -> list[str]:
        return [
            row["episode_id"]
            for row in self._rows("SELECT episode_id FROM run_episodes WHERE run_id = ?", (run_id,))
        ]

    def set_run_limits(self, run_id: str, *, budget: float | None, max_machines: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET budget = ?, max_machines = ? WHERE id = ?",
                (budget, max_machines, run_id),
            )

    def run_workers(self, run_id: str) -> list[dict[str, Any]]:
        """Workers that finished chunks of the run's episodes while it ran."""
        return self._rows(
            "SELECT * FROM workers WHERE id IN (SELECT DISTINCT c.worker_id FROM chunks c"
            " JOIN run_episodes e ON e.episode_id = c.episode_id JOIN runs r ON r.id = e.run_id"
            " WHERE r.id = ? AND c.state = 'done' AND c.finished_at >= r.started_at)",
            (run_id,),
        )

    # Calibrations -----------------------------------------------------------------------

    def calibrations(self, model: str, compute_type: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM calibrations WHERE model = ? AND compute_type = ?",
            (model, compute_type),
        )

    def fold_calibration(
        self,
        model: str,
        compute_type: str,
        kind: str,
        per_cpu: float,
        audio_seconds: float,
        history_cap: float = 3600.0,
    ) -> dict[str, Any]:
        """Average a new speed measurement into the stored one, weighted by audio, with
        the history's weight capped so the figure follows change."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT per_cpu, audio_seconds, runs FROM calibrations"
                " WHERE model = ? AND compute_type = ? AND kind = ?",
                (model, compute_type, kind),
            ).fetchone()
            if row is not None:
                weight = min(row[1], history_cap)
                per_cpu = (row[0] * weight + per_cpu * audio_seconds) / (weight + audio_seconds)
                audio_seconds += row[1]
            runs = (row[2] if row is not None else 0) + 1
            conn.execute(
                "INSERT OR REPLACE INTO calibrations (model, compute_type, kind, per_cpu,"
                " audio_seconds, runs, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, compute_type, kind, per_cpu, audio_seconds, runs, self.clock()),
            )
        return {
            "model": model,
            "compute_type": compute_type,
            "kind": kind,
            "per_cpu": per_cpu,
            "audio_seconds": audio_seconds,
            "runs": runs,
        }

    def end_run(self, run_id: str, state: str) -> None:
        spent = self.spend(run_id)
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, ended_at = ?, spent = ? WHERE id = ?",
                (state, self.clock(), spent, run_id),
            )

    # Status queries (read-only; for `whisperfarm status` and the status page) ----------

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

    def run_episode_pairs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """(run_id, episode_id) rows of these runs, in the order episodes joined them."""
        return self._rows(
            "SELECT run_id, episode_id FROM run_episodes"
            " WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
            (json.dumps(run_ids),),
        )

    def episode_run_pairs(self, episode_ids: list[str]) -> list[dict[str, Any]]:
        """(run_id, episode_id) rows of every run that included any of these episodes."""
        return self._rows(
            "SELECT run_id, episode_id FROM run_episodes"
            " WHERE episode_id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
            (json.dumps(episode_ids),),
        )

    def episodes_by_id(self, episode_ids: list[str]) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM episodes WHERE id IN (SELECT value FROM json_each(?))"
            " ORDER BY created_at, id",
            (json.dumps(episode_ids),),
        )

    def chunk_states(self, episode_ids: list[str]) -> list[dict[str, Any]]:
        """The chunks of these episodes without their file paths, by episode and idx."""
        return self._rows(
            "SELECT id, episode_id, idx, start, end, keep_start, keep_end, speech, state,"
            " attempt, worker_id, lease_expires_at, claimed_at, finished_at, error FROM chunks"
            " WHERE episode_id IN (SELECT value FROM json_each(?)) ORDER BY episode_id, idx",
            (json.dumps(episode_ids),),
        )

    def leased_chunks(self) -> list[dict[str, Any]]:
        """Chunks under lease now, with their episode's name (what each worker is on)."""
        return self._rows(
            "SELECT c.id, c.episode_id, c.idx, c.worker_id, c.lease_expires_at,"
            " e.name AS episode_name FROM chunks c JOIN episodes e ON e.id = c.episode_id"
            " WHERE c.state = 'leased' ORDER BY c.id"
        )

    def machines_of_runs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """The Fly machines of these runs, in the order they were created."""
        return self._rows(
            "SELECT * FROM machines WHERE run_id IN (SELECT value FROM json_each(?))"
            " ORDER BY created_at, id",
            (json.dumps(run_ids),),
        )

    def episode_count(self) -> int:
        return int(self.db.conn.execute("SELECT count(*) FROM episodes").fetchone()[0])

    def requeue_chunks(self, chunk_ids: list[int]) -> int:
        """Put these done or dead chunks back in the queue (say, a result was lost)."""
        ids = json.dumps(chunk_ids)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE chunks SET state = 'queued', attempt = 0, lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL, result_path = NULL, finished_at = NULL"
                " WHERE state IN ('done', 'dead') AND id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            conn.execute(
                "DELETE FROM results WHERE chunk_id IN (SELECT value FROM json_each(?))", (ids,)
            )
            return cursor.rowcount


def machine_seconds(row: Mapping[str, Any], now: float) -> float:
    """Billed seconds: from started (``record_machine`` sets it at creation, to err on the
    side of the budget) until first seen stopped or destroyed, or until ``now`` while it
    runs."""
    started = row["started_at"]
    if started is None:
        return 0.0
    ends = [t for t in (row["stopped_at"], row["destroyed_at"]) if t is not None and t >= started]
    return max(0.0, min([now, *ends]) - started)


def machine_cost(row: Mapping[str, Any], now: float) -> float:
    """Dollars one machine row has cost by ``now``: the one definition of spend."""
    return machine_seconds(row, now) * float(row["usd_per_second"])
