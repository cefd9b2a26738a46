"""The timeline invariants, whatever the chunk results hold: every segment and word has
0 ≤ start ≤ end ≤ the episode's end, starts never go backwards, every word lies inside its
segment and every segment inside its chunk's audio; and every output format says so.

Hypothesis feeds the stitcher the results a confused model and a careless worker could
send: times past the chunk, ends before starts, negative times, overlaps, duplicates,
empty text, words outside their segment, and chunks that overlap at seams."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings

from tests.support.strategies import SPEECH, chunk_plans
from whisperfarm.evaluation import cue_spans, timeline_violations, tsv_spans
from whisperfarm.stitch import ChunkResult, stitch
from whisperfarm.transcripts import WRITERS, Segment, Transcript


def spans(segments: list[Segment]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    return (
        [(s.start, s.end) for s in segments],
        [(w.start, w.end) for s in segments for w in s.words or []],
    )


@given(chunk_plans(), SPEECH)
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
def test_stitched_segments_and_words_keep_the_timeline(
    chunks: list[ChunkResult], speech: list[tuple[float, float]] | None
) -> None:
    duration = max(c.end for c in chunks)
    segments = stitch(chunks, keep_words=True, speech=speech)
    segment_spans, word_spans = spans(segments)
    assert timeline_violations(segment_spans, duration) == 0
    assert timeline_violations(word_spans, duration) == 0
    by_idx = {c.idx: c for c in chunks}
    audio = [(by_idx[i].start, by_idx[i].end) for i in sorted(by_idx)]
    for segment in segments:
        assert any(lo <= segment.start <= segment.end <= hi for lo, hi in audio), (
            "a segment outside every chunk's audio"
        )
        assert segment.text.strip()
        for word in segment.words or []:
            assert segment.start <= word.start <= word.end <= segment.end


@given(chunk_plans(), SPEECH)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_every_output_format_keeps_the_timeline(
    chunks: list[ChunkResult], speech: list[tuple[float, float]] | None
) -> None:
    duration = max(c.end for c in chunks)
    transcript = Transcript(stitch(chunks, keep_words=True, speech=speech), {"name": "t"}, "en")
    outputs = {name: write(transcript) for name, write in WRITERS.items()}
    assert timeline_violations(cue_spans(outputs["srt"]), duration) == 0
    assert timeline_violations(cue_spans(outputs["vtt"]), duration) == 0
    assert timeline_violations(tsv_spans(outputs["tsv"]), duration) == 0
    document = json.loads(outputs["json"])
    assert (
        timeline_violations([(s["start"], s["end"]) for s in document["segments"]], duration) == 0
    )
    words = [(w["start"], w["end"]) for s in document["segments"] for w in s.get("words", [])]
    assert timeline_violations(words, duration) == 0
    assert len(outputs["txt"].splitlines()) == len(document["segments"])


def test_the_reported_failure_a_second_window_past_the_chunk() -> None:
    """Issue 11: chunk 0 (28.64 s of audio) came back with segments up to 38 s from a
    second, mostly padded window ("Okay." over and over); the srt had a cue
    00:00:30,000 --> 00:00:28,640 and starts that went backwards."""
    okay = [{"start": 13.0 + n, "end": 14.0 + n, "text": " Okay."} for n in range(25)]
    first = {"segments": [{"start": 0.0, "end": 12.5, "text": " Real words."}, *okay]}
    second = {"segments": [{"start": 0.5, "end": 4.0, "text": " More real words."}]}
    chunks = [
        ChunkResult(0, 0.0, 28.64, 0.0, 28.64, first),
        ChunkResult(1, 28.64, 50.0, 28.64, 50.0, second),
    ]
    srt = WRITERS["srt"](Transcript(stitch(chunks)))
    assert timeline_violations(cue_spans(srt), 50.0) == 0
    assert "00:00:30,000 --> 00:00:28,640" not in srt
    assert srt.count("Okay.") == 1


def test_dropping_words_away_from_speech_keeps_starts_in_order() -> None:
    """The speech filter used to run after the timeline was made valid: a segment that lost
    its first word ("Hello", far from speech) started at 8.0, after the next one's 5.0."""

    def word(start: float, end: float, text: str) -> dict[str, Any]:
        return {"start": start, "end": end, "word": text, "probability": 0.9}

    result = {
        "segments": [
            {
                "start": 0.0,
                "end": 9.0,
                "text": " Hello there friend",
                "words": [
                    word(0.0, 0.5, " Hello"),
                    word(8.0, 8.5, " there"),
                    word(8.5, 9.0, " friend"),
                ],
            },
            {"start": 5.0, "end": 7.0, "text": " again", "words": [word(5.0, 7.0, " again")]},
        ]
    }
    segments = stitch(
        [ChunkResult(0, 0.0, 20.0, 0.0, 20.0, result)], keep_words=True, speech=[(4.0, 10.0)]
    )
    assert "Hello" not in " ".join(s.text for s in segments)
    starts = [s.start for s in segments]
    assert starts == sorted(starts)
    for segment in segments:
        for w in segment.words or []:
            assert segment.start <= w.start <= w.end <= segment.end
