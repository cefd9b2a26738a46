"""Dropping what Whisper wrote that nobody said, from one chunk's result.

Each rule is a pure function on the chunk's segments as the worker sent them (dicts with
times relative to the chunk's audio, ``length`` seconds of it) and returns the segments to
keep; none needs the model, so each is tested on hand-made results. The stitcher applies
``clean`` where it places a chunk on the episode timeline, so a rule changed here applies
to results already in the ledger too (``whisperfarm export`` rewrites them).

The rules (README, "Hallucinations", has what each gained on real recordings):

- ``past_the_audio``: text the model placed at or past the end of the chunk's audio.
  ``WhisperModel.transcribe`` decodes a chunk's window, then seeks to the last timestamp
  it trusts and decodes the rest again as a window of a few seconds of audio and many of
  padding, where Whisper hallucinates, with times past the audio.
- ``edge_junk``: a zero-length word of near-zero probability at the very start or end of
  the chunk's audio (the seams bench found a "3." of probability 0.001 at a chunk's start
  that one pass over the whole file, having no cut there, never wrote).
- ``silence_hallucination``: faster-whisper's ``hallucination_silence_threshold``, for
  results with word times: a segment whose words are improbable, too short or too long
  (its anomaly score) with more than ``SILENCE_SECONDS`` of silence, another such segment
  or the audio's edge on both sides.
- ``loops``: Whisper stuck on a phrase, written once.

Whisper's no-speech test (``no_speech_prob`` with ``avg_logprob``) and its compression
ratio test are not here: ``transcribe`` already applies both to every window (it skips a
window that fails the first and decodes again hotter one that fails the second), and on
the real recordings measured they dropped nothing more per segment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

Segments = list[dict[str, Any]]
Rule = Callable[[Segments, float], Segments]

LOOP_REPEATS = 3
PHRASE_REPEATS = 4
SILENCE_SECONDS = 2.0
EDGE_JUNK_SECONDS = 1.0
JUNK_PROBABILITY = 0.01
EDGE_SECONDS = 2.0  # faster-whisper's "near the window's edge"
PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"  # faster-whisper's, for the anomaly score

_WORDS = re.compile(r"[\w']+")
_REPEATED_TEXT = re.compile(rf"(.{{2,40}}?)\1{{{PHRASE_REPEATS - 1},}}", re.DOTALL)


def _norm(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _with_words(segment: dict[str, Any], keep: Callable[[dict[str, Any]], bool]) -> dict | None:
    """The segment with only the words ``keep`` accepts: unchanged if it keeps them all,
    None if none, else with its text and times taken from the words kept."""
    words = segment.get("words")
    if not words:
        return segment
    kept = [w for w in words if keep(w)]
    if len(kept) == len(words):
        return segment
    if not kept:
        return None
    return {
        **segment,
        "words": kept,
        "text": "".join(str(w.get("word", "")) for w in kept),
        "start": _number(kept[0].get("start")) or 0.0,
        "end": max(_number(w.get("end")) or 0.0 for w in kept),
    }


def past_the_audio(segments: Segments, length: float) -> Segments:
    """Drop segments and words that start at or past the end of the audio."""
    kept = []
    for segment in segments:
        start = _number(segment.get("start"))
        if start is None or start >= length:
            continue
        placed = _with_words(segment, lambda w: (_number(w.get("start")) or 0.0) < length)
        if placed is not None:
            kept.append(placed)
    return kept


def edge_junk(segments: Segments, length: float) -> Segments:
    """Drop zero-length, near-certainly-wrong words within ``EDGE_JUNK_SECONDS`` of the
    audio's start or end: what Whisper invents where audio starts or stops abruptly (the
    seams bench found a "3." of probability 0.001 at a chunk's start that one pass over the
    whole file, having no cut there, never wrote). A word with any length or any real
    probability is kept, wherever it is."""

    def real(word: dict[str, Any]) -> bool:
        start = _number(word.get("start")) or 0.0
        end = _number(word.get("end")) or 0.0
        probability = _number(word.get("probability"))
        return not (
            end <= start
            and probability is not None
            and probability < JUNK_PROBABILITY
            and (start < EDGE_JUNK_SECONDS or length - end < EDGE_JUNK_SECONDS)
        )

    return [s for s in (_with_words(s, real) for s in segments) if s is not None]


def _collapse_text(text: str) -> str:
    """A run of ``PHRASE_REPEATS`` or more copies of the same bit of text (2-40 characters,
    with a letter in it) in a row, written once: "en-dere-en-dere-en-dere-en-dere-" →
    "en-dere-". Numbers ("1000000") are left alone."""

    def once(match: re.Match[str]) -> str:
        unit = match.group(1)
        return unit if any(c.isalpha() for c in unit) else match.group(0)

    return _REPEATED_TEXT.sub(once, text)


def _collapse_words(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Words less the repeats of a 1-4 word phrase said ``PHRASE_REPEATS`` or more times in
    a row; each word's own text collapsed too."""
    kept: list[dict[str, Any]] = []
    i = 0
    while i < len(words):
        for size in range(1, 5):
            phrase = [_norm(str(w.get("word", ""))) for w in words[i : i + size]]
            count = 1
            while [
                _norm(str(w.get("word", "")))
                for w in words[i + count * size : i + (count + 1) * size]
            ] == phrase:
                count += 1
            if len(phrase) == size and any(phrase) and count >= PHRASE_REPEATS:
                kept.extend(words[i : i + size])
                i += count * size
                break
        else:
            kept.append(words[i])
            i += 1
    return [{**w, "word": _collapse_text(str(w.get("word", "")))} for w in kept]


def loops(segments: Segments, length: float) -> Segments:
    """Whisper stuck on a phrase, written once: a run of ``LOOP_REPEATS`` or more segments
    in a row with the same words ("Okay." × 25) keeps its first; a phrase repeated
    ``PHRASE_REPEATS`` or more times in a row across segments keeps its first copy
    (``_across_segments``); inside a segment, a phrase or a bit of a word repeated
    ``PHRASE_REPEATS`` or more times in a row is written once. A speaker saying something
    twice is no loop."""
    kept: Segments = []
    run: Segments = []
    for segment in [*segments, None]:
        if (
            segment is not None
            and run
            and _norm(segment.get("text", "")) == _norm(run[0].get("text", ""))
        ):
            run.append(segment)
            continue
        kept.extend(run[:1] if len(run) >= LOOP_REPEATS else run)
        run = [segment] if segment is not None else []
    return [_collapse(segment) for segment in _across_segments(kept)]


def _units(segment: dict[str, Any]) -> list[Any]:
    """What a loop is counted in: the segment's words, else its text's tokens."""
    return list(segment.get("words") or str(segment.get("text", "")).split())


def _unit_text(unit: Any) -> str:
    return _norm(str(unit.get("word", "")) if isinstance(unit, dict) else str(unit))


def _one_of(words: list[Any]) -> Callable[[dict[str, Any]], bool]:
    """Whether a word is one of ``words`` (the very objects)."""
    ids = {id(word) for word in words}
    return lambda word: id(word) in ids


def _across_segments(segments: Segments) -> Segments:
    """A phrase of 1-4 words repeated ``PHRASE_REPEATS`` or more times in a row over more
    than one segment ("sufervin, sufervin," · "sufervin," · "sufervin, sufervin,": tiny.en
    on French), written once: its repeats leave the segments they fall in, and a segment
    left with nothing goes. A run inside one segment is ``_collapse``'s."""
    per_segment = [_units(segment) for segment in segments]
    units = [(n, k) for n, its in enumerate(per_segment) for k in range(len(its))]
    texts = [_unit_text(unit) for its in per_segment for unit in its]
    gone: set[tuple[int, int]] = set()  # (segment, unit) of each repeat
    i = 0
    while i < len(units):
        for size in range(1, 5):
            phrase = texts[i : i + size]
            count = 1
            while texts[i + count * size : i + (count + 1) * size] == phrase:
                count += 1
            end = i + count * size
            looped = len(phrase) == size and all(phrase) and count >= PHRASE_REPEATS
            if looped and units[i][0] != units[end - 1][0]:  # over more than one segment
                gone.update(units[i + size : end])
                i = end
                break
        else:
            i += 1
    if not gone:
        return segments
    kept: Segments = []
    for n, (segment, its) in enumerate(zip(segments, per_segment, strict=True)):
        left = [u for k, u in enumerate(its) if (n, k) not in gone]
        if len(left) == len(its):
            kept.append(segment)
        elif left and segment.get("words"):
            rebuilt = _with_words(segment, _one_of(left))
            kept.extend([rebuilt] if rebuilt is not None else [])
        elif left:
            kept.append({**segment, "text": " " + " ".join(left)})
    return kept


def _collapse(segment: dict[str, Any]) -> dict[str, Any]:
    words = segment.get("words")
    if words:
        collapsed = _collapse_words(words)
        if collapsed == words:
            return segment
        return {**segment, "words": collapsed, "text": "".join(w["word"] for w in collapsed)}
    text = str(segment.get("text", ""))
    collapsed_text = _collapse_text(text)
    return segment if collapsed_text == text else {**segment, "text": collapsed_text}


def _anomaly(word: dict[str, Any]) -> float:
    probability = _number(word.get("probability"))
    duration = (_number(word.get("end")) or 0.0) - (_number(word.get("start")) or 0.0)
    score = 0.0
    if probability is None or probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _anomalous(segment: dict[str, Any] | None) -> bool:
    if segment is None or not segment.get("words"):
        return False
    words = [w for w in segment["words"] if w.get("word") not in PUNCTUATION][:8]
    score = sum(_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def silence_hallucination(segments: Segments, length: float) -> Segments:
    """Drop anomalous segments with silence (or more anomalies, or the window's edge) on
    both sides. Results without word times pass untouched."""
    spoken = [s for s in segments if s.get("words")]
    if not spoken:
        return segments
    dropped: set[int] = set()
    last_end = 0.0
    for n, segment in enumerate(spoken):
        start = _number(segment.get("start")) or 0.0
        end = _number(segment.get("end")) or 0.0
        if _anomalous(segment):
            following = spoken[n + 1] if n + 1 < len(spoken) else None
            next_start = _number(following["words"][0].get("start")) or 0.0 if following else length
            before = start - last_end > SILENCE_SECONDS or start < EDGE_SECONDS
            after = (
                next_start - end > SILENCE_SECONDS
                or _anomalous(following)
                or length - end < EDGE_SECONDS
            )
            if before and after:
                dropped.add(id(segment))
                continue
        last_end = end
    return [s for s in segments if id(s) not in dropped]


RULES: Sequence[Rule] = (
    past_the_audio,
    edge_junk,
    silence_hallucination,
    loops,
)


def clean(segments: Segments, length: float, rules: Sequence[Rule] | None = None) -> Segments:
    """The chunk's segments less what ``rules`` (default ``RULES``) drop, in order."""
    for rule in RULES if rules is None else rules:
        segments = rule(segments, length)
    return segments
