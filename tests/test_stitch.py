"""Stitching chunk results onto the episode timeline, and de-duplicating overlapped seams."""

from __future__ import annotations

import re
from typing import Any

import pytest

from whisperfarm.stitch import ChunkResult, stitch
from whisperfarm.transcripts import Segment, Word


def words_of_segment(segment: Segment) -> list[Word]:
    """A stitched segment's words: asked for (``keep_words=True``), so never None."""
    assert segment.words is not None
    return segment.words


def seg(start: float, end: float, text: str, words=None) -> dict:
    segment = {"start": start, "end": end, "text": text}
    if words is not None:
        segment["words"] = [
            {"start": s, "end": e, "word": w, "probability": 0.9} for s, e, w in words
        ]
    return segment


def clean(idx: int, start: float, end: float, segments) -> ChunkResult:
    result = None if segments is None else {"segments": segments, "language": "en"}
    return ChunkResult(idx, start, end, start, end, result)


def words_of(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


# Chunks cut at pauses -----------------------------------------------------------------------


def test_segments_are_offset_onto_the_timeline() -> None:
    chunks = [
        clean(0, 0.0, 20.0, [seg(0.5, 4.0, " Hello there."), seg(5.0, 19.0, " Second one.")]),
        clean(1, 20.0, 45.5, [seg(1.25, 6.0, " Third.")]),
    ]
    segments = stitch(chunks)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.5, 4.0, "Hello there."),
        (5.0, 19.0, "Second one."),
        (21.25, 26.0, "Third."),
    ]


def test_segment_end_is_clipped_to_the_chunk_end() -> None:
    (segment,) = stitch([clean(0, 10.0, 20.0, [seg(2.0, 10.7, " Runs past the end.")])])
    assert (segment.start, segment.end) == (12.0, 20.0)


def test_chunks_are_ordered_by_idx_whatever_the_input_order() -> None:
    chunks = [
        clean(2, 40.0, 60.0, [seg(0.0, 1.0, " three")]),
        clean(0, 0.0, 20.0, [seg(0.0, 1.0, " one")]),
        clean(1, 20.0, 40.0, [seg(0.0, 1.0, " two")]),
    ]
    segments = stitch(chunks)
    assert [s.text for s in segments] == ["one", "two", "three"]
    assert [s.start for s in segments] == [0.0, 20.0, 40.0]


def test_a_silent_chunk_contributes_nothing() -> None:
    chunks = [
        clean(0, 0.0, 20.0, [seg(0.0, 2.0, " before")]),
        clean(1, 20.0, 40.0, None),
        clean(2, 40.0, 60.0, [seg(1.0, 2.0, " after")]),
        clean(3, 60.0, 61.0, []),
    ]
    segments = stitch(chunks)
    assert [(s.start, s.text) for s in segments] == [(0.0, "before"), (41.0, "after")]


def test_clean_chunks_keep_their_words_offset_when_asked() -> None:
    chunk = clean(
        0, 30.0, 50.0, [seg(1.0, 2.0, " Hi you", [(1.0, 1.4, " Hi"), (1.5, 2.0, " you")])]
    )
    (segment,) = stitch([chunk], keep_words=True)
    assert [(w.start, w.end, w.word, w.probability) for w in words_of_segment(segment)] == [
        (31.0, 31.4, " Hi", 0.9),
        (31.5, 32.0, " you", 0.9),
    ]


def test_keep_words_false_strips_words() -> None:
    chunk = clean(0, 0.0, 20.0, [seg(1.0, 2.0, " Hi you", [(1.0, 1.4, " Hi"), (1.5, 2.0, " you")])])
    (segment,) = stitch([chunk])
    assert segment.words is None
    assert segment.text == "Hi you"


# Words whisper invents at a chunk's edge ----------------------------------------------------


def junk_chunk(
    junk_at: float, *, length: float = 0.0, probability: float = 0.001, more: bool = False
) -> ChunkResult:
    """A chunk 100..120 s whose one segment holds a word at ``junk_at`` (seconds into the
    chunk) besides two real ones (six with ``more``)."""
    words: list[dict[str, Any]] = [
        {"start": 2.0, "end": 2.4, "word": " real", "probability": 0.9},
        {"start": 2.5, "end": 3.0, "word": " words", "probability": 0.8},
    ]
    if more:
        words += [
            {"start": 3.0 + n * 0.5, "end": 3.4 + n * 0.5, "word": f" w{n}", "probability": 0.9}
            for n in range(4)
        ]
    words += [
        {"start": junk_at, "end": junk_at + length, "word": " 3.", "probability": probability},
    ]
    words.sort(key=lambda w: w["start"])
    segment = {"start": 0.0, "end": 3.0, "text": "".join(w["word"] for w in words), "words": words}
    return ChunkResult(0, 100.0, 120.0, 100.0, 120.0, {"segments": [segment]})


@pytest.mark.parametrize("junk_at", [0.0, 0.6, 19.5, 20.0])
def test_a_zero_length_improbable_word_at_a_chunk_edge_is_dropped(junk_at: float) -> None:
    (segment,) = stitch([junk_chunk(junk_at)], keep_words=True)
    assert segment.text == "real words"
    assert [w.word for w in words_of_segment(segment)] == [" real", " words"]
    assert (segment.start, segment.end) == (102.0, 103.0)


def test_a_segment_of_nothing_but_an_invented_word_is_dropped() -> None:
    segment = {
        "start": 0.0,
        "end": 0.0,
        "text": " 3.",
        "words": [{"start": 0.0, "end": 0.0, "word": " 3.", "probability": 0.001}],
    }
    chunk = ChunkResult(0, 100.0, 120.0, 100.0, 120.0, {"segments": [segment]})
    assert stitch([chunk]) == []


@pytest.mark.parametrize(
    ("junk_at", "length", "probability"),
    [
        (10.0, 0.0, 0.001),  # mid-chunk: the model's own doing, as in one pass
        (0.0, 0.3, 0.001),  # has a length: a real (if doubtful) word
        (0.0, 0.0, 0.5),  # zero length, but the model is fairly sure
    ],
)
def test_other_words_are_kept(junk_at: float, length: float, probability: float) -> None:
    # six real words: with two, the one doubtful word would make the whole segment look
    # invented, and between silences the silence rule (hallucinations.py) drops it
    chunk = junk_chunk(junk_at, length=length, probability=probability, more=True)
    (segment,) = stitch([chunk])
    assert "3." in segment.text


# Overlapped seams ---------------------------------------------------------------------------

# The cut is at 20.0 s with 1.5 s of overlap: the left chunk hears 0-21.5, the right one
# 18.5-40. Both transcribe "so the weather is really nice today" around the seam.
SEAM, OVERLAP = 20.0, 1.5
LEFT = ChunkResult(0, 0.0, SEAM + OVERLAP, 0.0, SEAM, None)
RIGHT = ChunkResult(1, SEAM - OVERLAP, 40.0, SEAM, 40.0, None)


def overlapped(left_segments, right_segments) -> list[ChunkResult]:
    left = ChunkResult(**{**LEFT.__dict__, "result": {"segments": left_segments}})
    right = ChunkResult(**{**RIGHT.__dict__, "result": {"segments": right_segments}})
    return [left, right]


def left_side() -> list[dict]:
    # times relative to the left chunk (start 0.0)
    return [
        seg(
            10.0,
            15.0,
            " We went out.",
            [(10.0, 10.5, " We"), (10.6, 11.0, " went"), (11.1, 15.0, " out.")],
        ),
        seg(
            18.0,
            21.5,
            " So the weather is really nice tod",
            [
                (18.0, 18.3, " So"),
                (18.6, 18.8, " the"),
                (18.9, 19.4, " weather"),
                (19.5, 19.7, " is"),
                (19.9, 20.3, " really"),
                (20.4, 20.8, " nice"),
                (21.1, 21.5, " tod"),  # cut off by the chunk's end
            ],
        ),
    ]


def right_side() -> list[dict]:
    # times relative to the right chunk (start 18.5): slightly different from the left's
    return [
        seg(
            0.0,
            3.0,
            " o the weather is really nice today",
            [
                (0.0, 0.08, " o"),  # the tail of "So", cut in half by the chunk's start
                (0.13, 0.31, " the"),
                (0.42, 0.93, " weather"),
                (1.02, 1.21, " is"),
                (1.42, 1.79, " really"),
                (1.92, 2.28, " nice"),
                (2.4, 2.95, " today"),
            ],
        ),
        seg(
            3.5,
            6.0,
            " and then we left.",
            [(3.5, 3.8, " and"), (3.9, 4.3, " then"), (4.4, 4.8, " we"), (4.9, 6.0, " left.")],
        ),
    ]


def test_overlapped_seam_keeps_each_word_exactly_once() -> None:
    segments = stitch(overlapped(left_side(), right_side()))
    text = " ".join(s.text for s in segments)
    expected = "we went out so the weather is really nice today and then we left"
    assert words_of(text) == expected.split(" ")


def test_overlapped_seam_joins_at_the_matched_word_nearest_the_cut() -> None:
    segments = stitch(overlapped(left_side(), right_side()), keep_words=True)
    words = [(w.word.strip(), w.start) for s in segments for w in words_of_segment(s)]

    # "really" (matched on both sides, nearest 20.0) comes from the left chunk, "nice"
    # onwards from the right one, offset by its start 18.5
    assert ("really", 19.9) in words
    nice = next(start for word, start in words if word == "nice")
    assert nice == pytest.approx(18.5 + 1.92)
    assert [start for _, start in words] == sorted(start for _, start in words)


def test_segments_rebuilt_from_kept_words_take_times_and_text_from_them() -> None:
    segments = stitch(overlapped(left_side(), right_side()), keep_words=True)
    assert [s.text for s in segments] == [
        "We went out.",
        "So the weather is really",
        "nice today",
        "and then we left.",
    ]
    for segment in segments:
        assert segment.start == words_of_segment(segment)[0].start
        assert segment.end == words_of_segment(segment)[-1].end
    assert (segments[1].start, segments[1].end) == (18.0, 20.3)
    assert segments[2].start == pytest.approx(18.5 + 1.92)
    assert segments[2].end == pytest.approx(18.5 + 2.95)
    # untouched segments keep their own times
    assert (segments[0].start, segments[0].end) == (10.0, 15.0)
    assert (segments[3].start, segments[3].end) == pytest.approx((22.0, 24.5))


def test_overlapped_seam_is_the_same_whatever_the_input_order() -> None:
    chunks = overlapped(left_side(), right_side())
    forward = [(s.start, s.end, s.text) for s in stitch(chunks)]
    backward = [(s.start, s.end, s.text) for s in stitch(list(reversed(chunks)))]
    assert forward == backward


def test_when_the_sides_share_no_word_each_word_goes_to_the_side_owning_its_midpoint() -> None:
    left = [
        seg(
            17.0,
            21.5,
            " alpha bravo charlie delta",
            [
                (17.0, 17.5, " alpha"),
                (18.8, 19.4, " bravo"),
                (19.7, 20.2, " charlie"),
                (20.6, 21.4, " delta"),
            ],
        )
    ]
    # the right side heard (or misheard) the overlap differently: nothing matches
    right = [
        seg(
            0.0,
            5.0,
            " echo foxtrot golf hotel",
            [
                (0.2, 0.8, " echo"),
                (1.0, 1.6, " foxtrot"),
                (1.7, 2.2, " golf"),
                (3.0, 4.0, " hotel"),
            ],
        )
    ]
    segments = stitch(overlapped(left, right), keep_words=True)
    kept = [(w.word.strip(), (w.start + w.end) / 2) for s in segments for w in words_of_segment(s)]

    # midpoints: charlie 19.95 (left keeps it), foxtrot 19.8 (< 20: dropped from the right),
    # golf 20.45 (right keeps it), delta 21.0 (> 20: dropped from the left)
    assert [word for word, _ in kept] == ["alpha", "bravo", "charlie", "golf", "hotel"]
    assert all(mid < SEAM for word, mid in kept[:3])
    assert all(mid >= SEAM for word, mid in kept[3:])


def test_overlap_with_an_empty_side_keeps_the_other_side_by_midpoint() -> None:
    """The left chunk had no speech (result None) but the right one heard a word that
    starts before the seam: only words past the seam belong to the right chunk."""
    left = ChunkResult(**{**LEFT.__dict__, "result": None})
    right = ChunkResult(
        **{
            **RIGHT.__dict__,
            "result": {
                "segments": [seg(0.5, 4.0, " uh hello", [(0.5, 0.9, " uh"), (2.0, 4.0, " hello")])]
            },
        }
    )
    segments = stitch([left, right])
    assert [s.text for s in segments] == ["hello"]
    assert segments[0].start == pytest.approx(20.5)


def test_overlapped_chunks_without_words_keep_segments_by_midpoint() -> None:
    left = [seg(5.0, 10.0, " early"), seg(18.6, 20.8, " around the seam"), seg(20.9, 21.5, " late")]
    right = [seg(0.0, 1.2, " early copy"), seg(0.1, 2.3, " seam copy"), seg(3.0, 5.0, " later")]
    segments = stitch(overlapped(left, right))
    # on the timeline the left midpoints are 7.5, 19.7, 21.2 (kept below 20) and the
    # right ones 19.1, 19.7, 22.5 (kept from 20 on)
    assert [s.text for s in segments] == ["early", "around the seam", "later"]


def test_three_overlapped_chunks_each_word_once() -> None:
    """A middle chunk overlapped on both sides is trimmed at both ends."""
    a = ChunkResult(0, 0.0, 11.5, 0.0, 10.0, None)
    b = ChunkResult(1, 8.5, 21.5, 10.0, 20.0, None)
    c = ChunkResult(2, 18.5, 30.0, 20.0, 30.0, None)

    def words(chunk: ChunkResult, timeline: list[tuple[float, float, str]]) -> dict:
        inside = [
            (s - chunk.start, e - chunk.start, w)
            for s, e, w in timeline
            if s >= chunk.start and e <= chunk.end
        ]
        text = "".join(w for _, _, w in inside)
        return {"segments": [seg(inside[0][0], inside[-1][1], text, inside)]}

    timeline = [(t + 0.1, t + 0.6, f" w{int(t * 2)}") for t in [x / 2 for x in range(0, 59)]]
    for chunk in (a, b, c):
        chunk.result = words(chunk, timeline)
    text = " ".join(s.text for s in stitch([c, a, b]))
    assert words_of(text) == [w.strip() for _, _, w in timeline]
