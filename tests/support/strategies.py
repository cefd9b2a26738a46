"""Hypothesis strategies for what chunk results may hold: the results a confused model
and a careless worker could send (times past the chunk, ends before starts, negative
times, overlaps, duplicates, empty text, words outside their segment), and speech maps."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from whisperfarm.stitch import ChunkResult

TEXTS = st.sampled_from(["", " ", " Okay.", " hello there", " so the weather", " -->", " Okay."])
TIMES = st.one_of(
    st.floats(min_value=-5.0, max_value=70.0, allow_nan=False),
    st.sampled_from([0.0, 30.0, 38.0, 60.0]),
)


@st.composite
def raw_word(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "start": draw(TIMES),
        "end": draw(TIMES),
        "word": draw(st.sampled_from([" Okay.", " hi", " 3.", "", " you"])),
        "probability": draw(st.sampled_from([0.001, 0.5, 0.99])),
    }


@st.composite
def raw_segment(draw: st.DrawFn, words: bool) -> dict[str, Any]:
    segment: dict[str, Any] = {
        "start": draw(TIMES),
        "end": draw(TIMES),
        "text": draw(TEXTS),
        "avg_logprob": draw(st.sampled_from([-0.2, -1.5])),
        "no_speech_prob": draw(st.sampled_from([0.1, 0.9])),
    }
    if words:
        segment["words"] = draw(st.lists(raw_word(), max_size=4))
    return segment


@st.composite
def chunk_plans(draw: st.DrawFn) -> list[ChunkResult]:
    """Chunks as the cutter plans them: each owns [keep_start, keep_end), neighbours meet
    at the cut, and some overlap by up to 3 s on both sides of it."""
    count = draw(st.integers(1, 4))
    cuts = [0.0]
    for _ in range(count):
        cuts.append(cuts[-1] + draw(st.floats(6.5, 29.0)))
    overlapped = [draw(st.booleans()) for _ in range(count - 1)]
    words = draw(st.booleans())
    chunks = []
    for n in range(count):
        overlap_before = n > 0 and overlapped[n - 1]
        overlap_after = n < count - 1 and overlapped[n]
        start = cuts[n] - (3.0 if overlap_before else 0.0)
        end = cuts[n + 1] + (3.0 if overlap_after else 0.0)
        segments = draw(st.lists(raw_segment(words or overlap_before or overlap_after), max_size=6))
        if len(segments) > 0 and draw(st.booleans()):
            segments.append(dict(segments[-1]))  # a duplicate
        result = draw(st.sampled_from([None, {"segments": segments}, {"segments": segments}]))
        chunks.append(ChunkResult(n, start, end, cuts[n], cuts[n + 1], result))
    return draw(st.permutations(chunks))


SPEECH = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.floats(0.0, 60.0), st.floats(0.0, 20.0)).map(lambda p: (p[0], p[0] + p[1])),
        max_size=4,
    ).map(sorted),
)
"""An episode's speech map as the cutter records it, or None (cut without the model)."""
