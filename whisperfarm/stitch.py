"""Stitching chunk results into one transcript on the episode's timeline.

Each chunk's segments arrive with times relative to the chunk's audio. Stitching offsets
them onto the episode timeline and keeps chunk order. Chunks cut in a pause own their whole
audio, so their segments are kept as they are.

Where two chunks overlap (no pause was found near the cut), both transcribed the words
around the seam. The two transcripts of the overlap are aligned word by word; the seam is
moved to the matched word nearest the cut, and each word is kept from exactly one side. If
the two sides share no word, each word goes to the side that owns its midpoint.

Whisper sometimes invents a word where a chunk's audio begins or ends mid-air: zero
seconds long and near-certainly wrong (the seams bench found a "3." of probability 0.001
at a chunk's start that one pass over the whole file, having no cut there, never wrote).
Such a word within EDGE_SECONDS of a chunk's edge is dropped; a word with any length or any
real probability is kept, wherever it is.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from whisperfarm.transcripts import Segment, Word

EDGE_SECONDS = 1.0
JUNK_PROBABILITY = 0.01


@dataclass
class ChunkResult:
    """One chunk's place on the timeline and the worker's result (None: no speech)."""

    idx: int
    start: float
    end: float
    keep_start: float
    keep_end: float
    result: dict[str, Any] | None

    @classmethod
    def from_row(cls, chunk: Mapping[str, Any], result: dict[str, Any] | None) -> ChunkResult:
        """From a ledger chunk row and its loaded result."""
        return cls(
            chunk["idx"],
            chunk["start"],
            chunk["end"],
            chunk["keep_start"],
            chunk["keep_end"],
            result,
        )


@dataclass
class _Word:
    segment: int
    word: Word

    @property
    def mid(self) -> float:
        return (self.word.start + self.word.end) / 2


_NORMALISE = re.compile(r"[^\w']+")


def _norm(text: str) -> str:
    return _NORMALISE.sub("", text.lower())


def _edge_junk(word: Word, chunk: ChunkResult) -> bool:
    """A zero-length, near-certainly-wrong word at the very start or end of the chunk's
    audio: what whisper invents where audio starts or stops abruptly."""
    return (
        word.end <= word.start
        and word.probability is not None
        and word.probability < JUNK_PROBABILITY
        and (word.start - chunk.start < EDGE_SECONDS or chunk.end - word.end < EDGE_SECONDS)
    )


def _absolute_segments(chunk: ChunkResult) -> list[Segment]:
    if not chunk.result:
        return []
    segments = []
    for raw in chunk.result.get("segments", []):
        words = None
        if raw.get("words") is not None:
            words = [
                Word(
                    start=chunk.start + w["start"],
                    end=chunk.start + w["end"],
                    word=w["word"],
                    probability=w.get("probability"),
                )
                for w in raw["words"]
            ]
            kept = [w for w in words if not _edge_junk(w, chunk)]
            if len(kept) < len(words):
                if kept:
                    text = "".join(w.word for w in kept).strip()
                    segments.append(Segment(kept[0].start, kept[-1].end, text, kept))
                continue
        segments.append(
            Segment(
                start=chunk.start + raw["start"],
                end=min(chunk.start + raw["end"], chunk.end),
                text=raw["text"].strip(),
                words=words,
            )
        )
    return segments


def _words(segments: list[Segment]) -> list[_Word] | None:
    if any(segment.words is None for segment in segments):
        return None
    return [_Word(i, word) for i, segment in enumerate(segments) for word in segment.words or []]


def _seam(
    left: list[_Word], right: list[_Word], seam: float, lo: float, hi: float
) -> tuple[int, int]:
    """Where to join two overlapping word lists: (last index kept from left, first index
    kept from right). ``lo``..``hi`` is the overlap on the timeline."""
    tail = [i for i, w in enumerate(left) if w.mid >= lo]
    head = [j for j, w in enumerate(right) if w.mid <= hi]
    matcher = difflib.SequenceMatcher(
        None,
        [_norm(left[i].word.word) for i in tail],
        [_norm(right[j].word.word) for j in head],
        autojunk=False,
    )
    pairs = [
        (tail[block.a + k], head[block.b + k])
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
        if _norm(left[tail[block.a + k]].word.word)
    ]
    if pairs:
        i, j = min(pairs, key=lambda p: abs((left[p[0]].mid + right[p[1]].mid) / 2 - seam))
        return i, j + 1
    last = max((i for i, w in enumerate(left) if w.mid < seam), default=-1)
    first = min((j for j, w in enumerate(right) if w.mid >= seam), default=len(right))
    return last, first


def _rebuild(segments: list[Segment], kept: list[_Word]) -> list[Segment]:
    by_segment: dict[int, list[Word]] = {}
    for item in kept:
        by_segment.setdefault(item.segment, []).append(item.word)
    rebuilt = []
    for i, segment in enumerate(segments):
        words = by_segment.get(i)
        if not words:
            continue
        if len(words) == len(segment.words or []):
            rebuilt.append(segment)
            continue
        text = "".join(word.word for word in words).strip()
        rebuilt.append(Segment(words[0].start, words[-1].end, text, words))
    return rebuilt


def stitch(chunks: Sequence[ChunkResult], *, keep_words: bool = False) -> list[Segment]:
    """The episode's segments, in order, each word once."""
    ordered = sorted(chunks, key=lambda c: c.idx)
    segments = [_absolute_segments(chunk) for chunk in ordered]
    words = [_words(s) for s in segments]
    # For each chunk, the slice of its words to keep (None: keep by segment midpoint).
    first = [0] * len(ordered)
    last = [len(w) - 1 if w is not None else -1 for w in words]
    for n in range(len(ordered) - 1):
        left, right = ordered[n], ordered[n + 1]
        overlapping = left.end > left.keep_end or right.start < right.keep_start
        lw, rw = words[n], words[n + 1]
        if overlapping and lw is not None and rw is not None:
            a, b = _seam(lw, rw, left.keep_end, right.start, left.end)
            last[n] = min(last[n], a)
            first[n + 1] = max(first[n + 1], b)

    stitched: list[Segment] = []
    for n, chunk in enumerate(ordered):
        chunk_words = words[n]
        if chunk.start == chunk.keep_start and chunk.end == chunk.keep_end:
            kept_segments = segments[n]
        elif chunk_words is not None:
            kept_segments = _rebuild(segments[n], chunk_words[first[n] : last[n] + 1])
        else:
            kept_segments = [
                s for s in segments[n] if chunk.keep_start <= (s.start + s.end) / 2 < chunk.keep_end
            ]
        stitched.extend(kept_segments)
    if not keep_words:
        for segment in stitched:
            segment.words = None
    return stitched
