"""Chunks as planned and recorded: the cut, the stored results, the episode's progress.

Writes ``chunks`` (adding, requeueing) and reads ``results``; the moves between chunk
states under a lease are the queue's (``ledger.queue``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from whisperfarm.decoding import options_key
from whisperfarm.ledger.episodes import EpisodeStore
from whisperfarm.ledger.rows import ChunkRecord, ChunkStateRecord, JsonValue
from whisperfarm.states import ChunkState, EpisodeState

# The states as SQL spells them (StrEnums format as their values).
DEAD = ChunkState.DEAD
DONE = ChunkState.DONE
EPISODE_FAILED = EpisodeState.FAILED
EPISODE_QUEUED = EpisodeState.QUEUED
LEASED = ChunkState.LEASED
QUEUED = ChunkState.QUEUED


_WITHDRAW_QUEUED = f"DELETE FROM chunks WHERE episode_id = ? AND state = '{QUEUED}'"
_NO_BACKUP = "backup_token = NULL, backup_worker_id = NULL, backup_expires_at = NULL"
"""SQL: a chunk without a backup lease (ledger.queue)."""
AWAITING_AUDIO = "its audio is being cut again"
"""The error of a chunk set aside until the cut writes its audio again (``await_audio``)."""


class UnknownChunk(Exception):
    """No chunk with that id."""


_CURRENT_KEY = (
    "options_key = (SELECT e.options_key FROM episodes e JOIN chunks c ON c.episode_id = e.id"
    " WHERE c.id = results.chunk_id)"
)
"""SQL: a ``results`` row made with its episode's current options."""

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


@dataclass
class EpisodeProgress:
    episode_id: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    audio_total: float = 0.0
    audio_done: float = 0.0

    @property
    def done(self) -> int:
        return self.counts.get(ChunkState.DONE, 0)

    @property
    def dead(self) -> int:
        return self.counts.get(ChunkState.DEAD, 0)

    @property
    def finished(self) -> bool:
        """Every chunk is done or dead (chunking must also be complete: see Ledger)."""
        return self.total > 0 and self.done + self.dead == self.total


def kept_seconds(chunk: ChunkStateRecord) -> float:
    """Seconds of the timeline a chunk row owns: these add up to the episode's duration."""
    return max(0.0, chunk["keep_end"] - chunk["keep_start"])


class ChunkStore(EpisodeStore):
    """Chunks belong to episodes: progress and work left read both."""

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
            if same_cut and existing[2] in (ChunkState.DONE, ChunkState.LEASED, ChunkState.QUEUED):
                # Kept as it is: finished work stays finished, and a worker holding the
                # lease keeps a valid chunk id.
                return existing[2] != ChunkState.DONE
            state = ChunkState.QUEUED if plan.speech else ChunkState.DONE
            if existing is not None and not same_cut:  # a new cut: its results are no use
                conn.execute(
                    "DELETE FROM results WHERE chunk_id IN"
                    " (SELECT id FROM chunks WHERE episode_id = ? AND idx = ?)",
                    (episode_id, plan.idx),
                )
            # An upsert, not a REPLACE: the row (its id, and for the same cut its results
            # made with other options) stays; the chunk is queued anew.
            conn.execute(
                "INSERT INTO chunks (episode_id, idx, start, end, keep_start,"
                " keep_end, speech, words, audio_path, state, attempt, finished_at,"
                " speech_spans) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT (episode_id, idx) DO UPDATE SET start = excluded.start,"
                " end = excluded.end, keep_start = excluded.keep_start,"
                " keep_end = excluded.keep_end, speech = excluded.speech,"
                " words = excluded.words, audio_path = excluded.audio_path,"
                " state = excluded.state, attempt = 0, finished_at = excluded.finished_at,"
                " speech_spans = excluded.speech_spans, error = NULL, lease_token = NULL,"
                " lease_expires_at = NULL, worker_id = NULL, claimed_at = NULL,"
                f" result_path = NULL, {_NO_BACKUP}",
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
                f"UPDATE episodes SET state = '{EPISODE_QUEUED}', duration = ?, chunk_count = ?,"
                " error = NULL, updated_at = ? WHERE id = ?",
                (duration, chunk_count, self.clock(), episode_id),
            )

    def fail_chunking(self, episode_id: str, *, error: str) -> None:
        """The episode could not be cut (unreadable, truncated): it fails, and the chunks
        queued before the cut went wrong leave the queue, so no worker transcribes a part
        of an episode that can't finish. Chunks done before (a rerun) keep their results."""
        with self._write() as conn:
            conn.execute(_WITHDRAW_QUEUED, (episode_id,))
            conn.execute(
                f"UPDATE episodes SET state = '{EPISODE_FAILED}', error = ?, updated_at = ?"
                " WHERE id = ?",
                (error, self.clock(), episode_id),
            )

    def await_audio(self, episode_id: str) -> int:
        """Take the episode's queued chunks out of the queue until the cut writes their
        audio again (a done episode's audio is deleted, reclaim.py): no worker is handed a
        chunk without audio. They are set aside (dead), not deleted: their rows keep the
        results made with other options, and the cut queues each again in place (the same
        cut, ``add_chunk``)."""
        with self._write() as conn:
            return conn.execute(
                f"UPDATE chunks SET state = '{DEAD}', error = ?, lease_token = NULL,"
                " lease_expires_at = NULL WHERE episode_id = ? AND state = ?",
                (AWAITING_AUDIO, episode_id, QUEUED),
            ).rowcount

    def chunks(self, episode_id: str) -> list[ChunkRecord]:
        return self._chunk_rows(
            "SELECT * FROM chunks WHERE episode_id = ? ORDER BY idx", (episode_id,)
        )

    def chunk(self, chunk_id: int) -> ChunkRecord:
        rows = self._chunk_rows("SELECT * FROM chunks WHERE id = ?", (chunk_id,))
        if not rows:
            raise UnknownChunk(chunk_id)
        return rows[0]

    def requeue(
        self, episode_id: str, *, states: tuple[str, ...] = (ChunkState.LEASED, ChunkState.DEAD)
    ) -> int:
        """Put unfinished chunks back in the queue (resume after a crash, retry dead ones)."""
        marks = ", ".join("?" for _ in states)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE chunks SET state = '{QUEUED}', attempt = 0, lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL"
                f" WHERE episode_id = ? AND state IN ({marks})",
                (episode_id, *states),
            )
            return cursor.rowcount

    def requeue_chunks(self, chunk_ids: list[int]) -> int:
        """Put these done or dead chunks back in the queue (say, a result was lost). Their
        results under their episode's current options go; those under other options stay."""
        ids = json.dumps(chunk_ids)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE chunks SET state = '{QUEUED}', attempt = 0, lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL, result_path = NULL, finished_at = NULL"
                f" WHERE state IN ('{DONE}', '{DEAD}') AND id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            conn.execute(
                f"DELETE FROM results WHERE {_CURRENT_KEY}"
                " AND chunk_id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            return cursor.rowcount

    def switch_options(self, episode_id: str, options: dict[str, Any]) -> int:
        """Transcribe the episode with ``options`` from now on. Its chunks with a result
        made with these options are done (that result is reused); the others with speech
        are queued (a worker holding one loses its lease). No result is deleted: switching
        back reuses them. Returns the number of chunks queued."""
        key = options_key(options)
        with self._write() as conn:
            conn.execute(
                "UPDATE episodes SET options = ?, options_key = ?, updated_at = ? WHERE id = ?",
                (json.dumps(options), key, self.clock(), episode_id),
            )
            conn.execute(
                f"UPDATE chunks SET state = '{DONE}', lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL"
                " WHERE episode_id = ? AND speech = 1 AND id IN"
                "  (SELECT chunk_id FROM results WHERE options_key = ?)",
                (episode_id, key),
            )
            cursor = conn.execute(
                f"UPDATE chunks SET state = '{QUEUED}', attempt = 0, lease_token = NULL,"
                " lease_expires_at = NULL, error = NULL, finished_at = NULL"
                " WHERE episode_id = ? AND speech = 1 AND id NOT IN"
                "  (SELECT chunk_id FROM results WHERE options_key = ?)",
                (episode_id, key),
            )
            return cursor.rowcount

    # Results -----------------------------------------------------------------------------

    def result(self, chunk_id: int) -> JsonValue:
        """A done chunk's result (segments, language …), None if it has none. The JSON as
        stored, unchecked: a ledger from before results moved into it read them in from
        files, whatever they held."""
        row = self.conn.execute(
            f"SELECT body FROM results WHERE chunk_id = ? AND {_CURRENT_KEY}", (chunk_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def results(self, episode_id: str) -> dict[int, JsonValue]:
        """The episode's stored results by chunk id, as ``result`` gives each."""
        rows = self.conn.execute(
            "SELECT r.chunk_id, r.body FROM results r JOIN chunks c ON c.id = r.chunk_id"
            " JOIN episodes e ON e.id = c.episode_id"
            " WHERE c.episode_id = ? AND r.options_key = e.options_key",
            (episode_id,),
        )
        return {chunk_id: json.loads(body) for chunk_id, body in rows}

    def missing_results(self, episode_id: str) -> list[ChunkRecord]:
        """Chunks marked done with speech but no stored result: only a ledger from before
        results moved into it, whose result file was gone, has any."""
        return self._chunk_rows(
            f"SELECT * FROM chunks WHERE episode_id = ? AND state = '{DONE}' AND speech = 1"
            " AND id NOT IN (SELECT chunk_id FROM results WHERE options_key ="
            "  (SELECT options_key FROM episodes WHERE id = ?)) ORDER BY idx",
            (episode_id, episode_id),
        )

    def _chunk_rows(self, sql: str, params: tuple[object, ...] = ()) -> list[ChunkRecord]:
        return cast(list[ChunkRecord], self._rows(sql, params))

    # Progress ----------------------------------------------------------------------------

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
            if state == ChunkState.DONE:
                progress.audio_done += seconds or 0.0
        return progress

    def work_left(self, episode_ids: list[str]) -> tuple[float, int]:
        """(seconds of audio, chunks) still to transcribe. For an episode still being cut,
        the part not yet cut counts by its declared duration, in 25-second chunks."""
        audio, chunks = 0.0, 0
        for episode_id in episode_ids:
            episode = self.episode(episode_id)
            if episode["state"] in (EpisodeState.DONE, EpisodeState.FAILED):
                continue
            row = self.db.conn.execute(
                f"SELECT coalesce(sum(CASE WHEN state IN ('{QUEUED}', '{LEASED}') THEN end - start"
                f" END), 0), count(CASE WHEN state IN ('{QUEUED}', '{LEASED}') THEN 1 END),"
                " coalesce(max(keep_end), 0) FROM chunks WHERE episode_id = ?",
                (episode_id,),
            ).fetchone()
            audio += row[0]
            chunks += row[1]
            if episode["state"] == EpisodeState.CHUNKING and episode["duration"]:
                uncut = max(0.0, episode["duration"] - row[2])
                audio += uncut
                chunks += int(uncut // 25) + (1 if uncut % 25 else 0)
        return audio, chunks

    def chunk_counts(self, episode_ids: list[str]) -> tuple[int, int]:
        """(done, total) chunks over these episodes."""
        row = self.db.conn.execute(
            f"SELECT count(CASE WHEN state = '{DONE}' THEN 1 END), count(*) FROM chunks"
            " WHERE episode_id IN (SELECT value FROM json_each(?))",
            (json.dumps(episode_ids),),
        ).fetchone()
        return int(row[0]), int(row[1])
