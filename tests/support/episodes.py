"""Episodes queued in a ledger the way the CLI leaves them after cutting, for the ledger
and queue tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from whisperfarm.ledger import ChunkPlan, Ledger


def make_episode(
    ledger: Ledger,
    episode_id: str = "ep1",
    lengths: Sequence[float] = (10.0, 20.0, 15.0),
    *,
    finish: bool = True,
    options: dict[str, Any] | None = None,
) -> list[ChunkPlan]:
    """An episode cut into clean chunks of the given lengths (seconds), in idx order."""
    ledger.create_episode(
        episode_id=episode_id,
        name=episode_id,
        source=f"/audio/{episode_id}.mp3",
        content_hash=f"hash-{episode_id}",
        model="tiny.en",
        options=options if options is not None else {"language": "en", "beam_size": 5},
    )
    plans = []
    t = 0.0
    for idx, length in enumerate(lengths):
        plan = ChunkPlan(idx, t, t + length, t, t + length)
        ledger.add_chunk(episode_id, plan, f"/chunks/{episode_id}/{idx:05d}.wav")
        plans.append(plan)
        t += length
    if finish:
        ledger.finish_chunking(episode_id, duration=t, chunk_count=len(lengths))
    return plans
