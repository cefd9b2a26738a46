"""Word error rate against a reference transcript, for tests and benchmarks.

Needs ``jiwer`` (the ``dev`` extra)."""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Lower case, no punctuation, hyphens as spaces, single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower().replace("-", " ")).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


# --- checks of a written transcript, for the real-audio benchmark and its tests ----------

TIMELINE_SLACK = 0.001  # seconds: the formats round to milliseconds


def timeline_violations(spans: list[tuple[float, float]], duration: float) -> int:
    """Spans (start, end), in the order a transcript lists them, that break the timeline:
    a start below 0, an end before its start or past ``duration``, or a start before the
    previous one."""
    bad = 0
    previous = 0.0
    for start, end in spans:
        if (
            start < 0
            or end < start
            or end > duration + TIMELINE_SLACK
            or start < previous - TIMELINE_SLACK
        ):
            bad += 1
        previous = max(previous, start)
    return bad


def repetition_loops(text: str, *, repeats: int = 4, longest: int = 4) -> int:
    """How many times the same short phrase (1 to ``longest`` words) comes ``repeats`` or
    more times in a row: Whisper's repetition loops ("Okay. Okay. Okay. Okay. …")."""
    words = normalise(text).split()
    loops = i = 0
    while i < len(words):
        for size in range(1, longest + 1):
            phrase = words[i : i + size]
            count = 1
            while words[i + count * size : i + (count + 1) * size] == phrase:
                count += 1
            if len(phrase) == size and count >= repeats:
                loops += 1
                i += count * size
                break
        else:
            i += 1
    return loops


def words_within(
    words: list[tuple[float, float]], stretches: list[tuple[float, float]], margin: float = 0.25
) -> int:
    """Words whose middle lies inside one of ``stretches``, each shrunk by ``margin`` on
    both sides (a word's edge may touch a stretch where speech meets it)."""
    count = 0
    for start, end in words:
        middle = (start + end) / 2
        if any(lo + margin <= middle <= hi - margin for lo, hi in stretches):
            count += 1
    return count


_CUE = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{3}) --> (\d+):(\d\d):(\d\d)[,.](\d{3})")


def cue_spans(text: str) -> list[tuple[float, float]]:
    """The (start, end) of every cue of an srt or vtt file, in order."""
    spans = []
    for match in _CUE.finditer(text):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups())
        spans.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return spans


def tsv_spans(text: str) -> list[tuple[float, float]]:
    """The (start, end) of every row of a tsv transcript (milliseconds), in order."""
    spans = []
    for line in text.splitlines()[1:]:
        start, end, _ = line.split("\t", 2)
        spans.append((int(start) / 1000, int(end) / 1000))
    return spans
