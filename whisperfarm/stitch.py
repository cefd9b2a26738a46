"""Stitching chunk results into one transcript on the episode's timeline.

Each chunk's segments arrive with times relative to the chunk's audio. Stitching offsets
them onto the episode timeline and keeps chunk order. Chunks cut in a pause own their whole
audio, so their segments are kept as they are.

Where two chunks overlap (no pause was found near the cut), both transcribed the words
around the seam. The two transcripts of the overlap are aligned word by word; the seam is
moved to the matched word nearest the cut, and each word is kept from exactly one side. If
the two sides share no word, each word goes to the side that owns its midpoint.

Placing a chunk on the timeline is the one place where the timeline is made valid, whatever
the result holds: what ``hallucinations.clean`` drops goes first (text past the chunk's
audio, loops, what Whisper flags as no speech …); every other time is clamped into the
chunk's audio, and a last pass over the episode makes starts never go backwards and keeps
every word inside its segment. Every segment and word then has 0 ≤ start ≤ end ≤ the
episode's end, and every output format (``transcripts.py``) inherits that.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from whisperfarm import hallucinations
from whisperfarm.speech import Span, keep_spoken
from whisperfarm.transcripts import Segment, Word


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


def _seconds(value: Any) -> float | None:
    """A time from a result, or None if it is no usable number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _clamp(chunk: ChunkResult, seconds: float) -> float:
    """A time relative to the chunk, placed on the episode timeline within its audio."""
    return min(max(chunk.start + seconds, chunk.start), chunk.end)


def _place_words(chunk: ChunkResult, raw_words: list[dict[str, Any]]) -> list[Word]:
    words = []
    for raw in raw_words:
        start, end = _seconds(raw.get("start")), _seconds(raw.get("end"))
        if start is None or end is None or not str(raw.get("word", "")).strip():
            continue
        begins = _clamp(chunk, start)
        words.append(
            Word(begins, max(begins, _clamp(chunk, end)), raw["word"], raw.get("probability"))
        )
    return sorted(words, key=lambda w: w.start)


def _place(chunk: ChunkResult) -> list[Segment]:
    """The chunk's segments on the episode timeline, each inside the chunk's audio.

    What the model placed past the audio, what the hallucination rules drop and empty
    text go; the other times are clamped into the audio, an end before its start becomes
    the start, and a segment is widened to hold its words. When words were dropped, the
    segment's text and times are rebuilt from the ones kept."""
    if not chunk.result:
        return []
    raw_segments = [s for s in chunk.result.get("segments") or [] if isinstance(s, dict)]
    segments = []
    for raw in hallucinations.clean(raw_segments, chunk.end - chunk.start):
        start, end = _seconds(raw.get("start")), _seconds(raw.get("end"))
        text = str(raw.get("text") or "").strip()
        if start is None or end is None or not text:
            continue
        begins = _clamp(chunk, start)
        ends = max(begins, _clamp(chunk, end))
        if raw.get("words") is None:
            segments.append(Segment(begins, ends, text))
            continue
        words = _place_words(chunk, raw["words"])
        if len(words) < len(raw["words"]):
            if words:
                text = "".join(w.word for w in words).strip()
                segments.append(Segment(words[0].start, words[-1].end, text, words))
            continue
        if words:
            begins, ends = min(begins, words[0].start), max(ends, max(w.end for w in words))
        segments.append(Segment(begins, ends, text, words))
    return sorted(segments, key=lambda s: s.start)


def _on_the_timeline(segments: list[Segment]) -> list[Segment]:
    """Starts that never go backwards, for segments and for words, and every word inside
    its segment. Every time here is one already placed inside some chunk's audio or the
    larger of two such, so all stay within 0 and the episode's end."""
    placed = []
    floor = word_floor = 0.0
    for segment in segments:
        start = max(segment.start, floor)
        end = max(segment.end, start)
        words = None
        if segment.words is not None:
            words = []
            word_floor = max(word_floor, start)
            for word in segment.words:
                begins = max(word.start, word_floor)
                words.append(Word(begins, max(word.end, begins), word.word, word.probability))
                word_floor = begins
            end = max([end, *(w.end for w in words)])
        placed.append(Segment(start, end, segment.text, words))
        floor = start
    return placed


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


def stitch(
    chunks: Sequence[ChunkResult],
    *,
    keep_words: bool = False,
    speech: Sequence[Span] | None = None,
) -> list[Segment]:
    """The episode's segments, in order, each word once. ``speech``: the episode's speech
    map (``speech.episode_spans``); what lies well away from it is dropped before the
    timeline is made valid, so the invariants hold for what is left."""
    ordered = sorted(chunks, key=lambda c: c.idx)
    segments = [_place(chunk) for chunk in ordered]
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
    stitched = _on_the_timeline(keep_spoken(stitched, speech))
    if not keep_words:
        for segment in stitched:
            segment.words = None
    return stitched
