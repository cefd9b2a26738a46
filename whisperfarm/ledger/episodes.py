"""Episodes (``episodes``): one per recording and model, found again by content hash."""

from __future__ import annotations

import json
from typing import Any, cast

from whisperfarm.decoding import options_key
from whisperfarm.errors import EpisodeNotFound
from whisperfarm.ledger.rows import EpisodeRecord
from whisperfarm.ledger.store import Store
from whisperfarm.states import EpisodeState

# The states as SQL spells them (StrEnums format as their values).
EPISODE_CHUNKING = EpisodeState.CHUNKING


class EpisodeStore(Store):
    def find_episode(self, content_hash: str, model: str) -> EpisodeRecord | None:
        rows = self._episode_rows(
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
    ) -> EpisodeRecord:
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO episodes (id, name, source, content_hash, model, options,"
                " options_key, state, created_at, updated_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, '{EPISODE_CHUNKING}', ?, ?)",
                (
                    episode_id,
                    name,
                    source,
                    content_hash,
                    model,
                    json.dumps(options),
                    options_key(options),
                    now,
                    now,
                ),
            )
        return self.episode(episode_id)

    def episode(self, episode_id: str) -> EpisodeRecord:
        rows = self._episode_rows("SELECT * FROM episodes WHERE id = ?", (episode_id,))
        if not rows:
            raise EpisodeNotFound(
                f"no episode {episode_id!r}: 'whisperfarm episodes' lists what the ledger holds"
            )
        return rows[0]

    def find_episodes(self, ref: str) -> list[EpisodeRecord]:
        """Episodes whose id starts with ``ref`` or whose name is ``ref``."""
        if not ref:
            return []
        return self._episode_rows(
            "SELECT * FROM episodes WHERE substr(id, 1, ?) = ? OR name = ? ORDER BY created_at",
            (len(ref), ref, ref),
        )

    def episodes(self) -> list[EpisodeRecord]:
        return self._episode_rows("SELECT * FROM episodes ORDER BY created_at")

    def _episode_rows(self, sql: str, params: tuple[object, ...] = ()) -> list[EpisodeRecord]:
        return cast(list[EpisodeRecord], self._rows(sql, params))

    def update_episode(self, episode_id: str, **fields: Any) -> None:
        fields["updated_at"] = self.clock()
        if "options" in fields:
            # options and their key change together (ChunkStore.switch_options also
            # requeues the chunks that have no result under the new key)
            raise ValueError("an episode's options change by switch_options")
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
