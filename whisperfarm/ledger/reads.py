"""Reads for ``whisperfarm status``, ``cost`` and the status page: read-only, meant to be
called inside one ``ledger.reading()`` so a snapshot never mixes before and after a write."""

from __future__ import annotations

import json
from typing import cast

from whisperfarm.ledger.rows import (
    ChunkStateRecord,
    EpisodeRecord,
    LeasedChunkRecord,
    RunEpisodeRecord,
)
from whisperfarm.ledger.store import Store
from whisperfarm.states import ChunkState

# The states as SQL spells them (StrEnums format as their values).
LEASED = ChunkState.LEASED


class StatusReads(Store):
    def run_episode_pairs(self, run_ids: list[str]) -> list[RunEpisodeRecord]:
        """(run_id, episode_id) rows of these runs, in the order episodes joined them."""
        rows = self._rows(
            "SELECT run_id, episode_id FROM run_episodes"
            " WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
            (json.dumps(run_ids),),
        )
        return cast(list[RunEpisodeRecord], rows)

    def episode_run_pairs(self, episode_ids: list[str]) -> list[RunEpisodeRecord]:
        """(run_id, episode_id) rows of every run that included any of these episodes."""
        rows = self._rows(
            "SELECT run_id, episode_id FROM run_episodes"
            " WHERE episode_id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
            (json.dumps(episode_ids),),
        )
        return cast(list[RunEpisodeRecord], rows)

    def episodes_by_id(self, episode_ids: list[str]) -> list[EpisodeRecord]:
        rows = self._rows(
            "SELECT * FROM episodes WHERE id IN (SELECT value FROM json_each(?))"
            " ORDER BY created_at, id",
            (json.dumps(episode_ids),),
        )
        return cast(list[EpisodeRecord], rows)

    def chunk_states(self, episode_ids: list[str]) -> list[ChunkStateRecord]:
        """The chunks of these episodes without their file paths, by episode and idx."""
        rows = self._rows(
            "SELECT id, episode_id, idx, start, end, keep_start, keep_end, speech, state,"
            " attempt, worker_id, lease_expires_at, claimed_at, finished_at, error FROM chunks"
            " WHERE episode_id IN (SELECT value FROM json_each(?)) ORDER BY episode_id, idx",
            (json.dumps(episode_ids),),
        )
        return cast(list[ChunkStateRecord], rows)

    def leased_chunks(self) -> list[LeasedChunkRecord]:
        """Chunks under lease now, with their episode's name (what each worker is on)."""
        rows = self._rows(
            "SELECT c.id, c.episode_id, c.idx, c.worker_id, c.lease_expires_at,"
            " e.name AS episode_name FROM chunks c JOIN episodes e ON e.id = c.episode_id"
            f" WHERE c.state = '{LEASED}' ORDER BY c.id"
        )
        return cast(list[LeasedChunkRecord], rows)

    def episode_count(self) -> int:
        return int(self.db.conn.execute("SELECT count(*) FROM episodes").fetchone()[0])
