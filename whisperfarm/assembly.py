"""An episode's transcript from the chunk results the ledger holds: the one way stored
results become a ``Transcript``, for the run that finishes an episode (``farm``),
``export`` (``episodes``) and the status page's text so far (``page``).

Every chunk takes its place on the episode's timeline (``stitch``); one without a result
(not done yet, no speech, or its result lost) adds no words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from whisperfarm.ledger import ChunkRecord, EpisodeRecord, JsonValue, Ledger
from whisperfarm.speech import episode_spans
from whisperfarm.states import ChunkState, EpisodeState
from whisperfarm.stitch import ChunkResult, stitch
from whisperfarm.transcripts import Transcript


def assemble(ledger: Ledger, episode: EpisodeRecord, *, keep_words: bool = False) -> Transcript:
    """The episode's transcript from its stored chunk results."""
    results = ledger.results(episode["id"])
    chunks = ledger.chunks(episode["id"])
    return _stitched(episode, chunks, results, keep_words=keep_words)


def text_so_far(ledger: Ledger, episode_id: str) -> tuple[str, bool]:
    """The episode's transcript text from the chunks done so far, and whether that is all
    of it. Chunks not done yet (or whose result is gone) are left out."""
    episode = ledger.episode(episode_id)
    results = ledger.results(episode_id)
    chunks = ledger.chunks(episode_id)
    complete = episode["state"] != EpisodeState.CHUNKING and all(
        chunk["state"] == ChunkState.DONE
        and not (chunk["speech"] and results.get(chunk["id"]) is None)
        for chunk in chunks
    )
    return _stitched(episode, chunks, results, keep_words=False).text, complete


def _stitched(
    episode: EpisodeRecord,
    chunks: list[ChunkRecord],
    results: Mapping[int, JsonValue],
    *,
    keep_words: bool,
) -> Transcript:
    parts = []
    language = None
    for chunk in chunks:
        result = _result_object(results.get(chunk["id"]))
        if result is not None:
            language = language or result.get("language")
        parts.append(ChunkResult.from_row(chunk, result))
    segments = stitch(parts, keep_words=True, speech=episode_spans(chunks))
    if not keep_words:
        segments = [replace(segment, words=None) for segment in segments]
    meta = {
        "id": episode["id"],
        "name": episode["name"],
        "source": episode["source"],
        "content_hash": episode["content_hash"],
        "duration": episode["duration"],
        "model": episode["model"],
        "chunks": len(parts),
        "created_at": episode["created_at"],
    }
    return Transcript(segments, meta, language)


def _result_object(stored: JsonValue) -> dict[str, Any] | None:
    """A stored result as the stitcher reads it: a JSON object, every field checked where
    it is used (``stitch``); anything else is no result (None: no speech, or none yet)."""
    return stored if isinstance(stored, dict) else None
