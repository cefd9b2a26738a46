"""The checks the real-audio benchmark (scripts/bench_real.py) and the end-to-end tests
apply to a written transcript."""

from __future__ import annotations

from whisperfarm.evaluation import (
    cue_spans,
    repetition_loops,
    timeline_violations,
    tsv_spans,
    words_within,
)


def test_a_valid_timeline_has_no_violations() -> None:
    assert timeline_violations([(0.0, 1.0), (1.0, 1.0), (0.5 + 0.5, 3.0)], duration=3.0) == 0


def test_each_kind_of_timeline_violation_counts() -> None:
    spans = [
        (-0.1, 1.0),  # starts before the episode
        (2.0, 1.5),  # ends before it starts
        (2.5, 9.0),  # ends past the episode
        (1.0, 2.0),  # starts before the previous one
        (3.0, 4.0),  # fine
    ]
    assert timeline_violations(spans, duration=5.0) == 4


def test_the_srt_cue_from_the_issue_is_a_violation() -> None:
    srt = "19\n00:00:30,000 --> 00:00:28,640\nOkay.\n"
    assert cue_spans(srt) == [(30.0, 28.64)]
    assert timeline_violations(cue_spans(srt), duration=60.0) == 1


def test_cues_and_tsv_rows_are_read_in_order() -> None:
    vtt = "WEBVTT\n\n01:02:03.004 --> 01:02:04.500\nHi\n\n00:00:01.000 --> 00:00:02.000\nYo\n"
    assert cue_spans(vtt) == [(3723.004, 3724.5), (1.0, 2.0)]
    assert tsv_spans("start\tend\ttext\n1000\t2500\thi there\n") == [(1.0, 2.5)]


def test_repetition_loops_count_a_phrase_said_four_times_in_a_row() -> None:
    assert repetition_loops("Okay. " * 25) == 1
    assert repetition_loops("thank you thank you thank you thank you, bye") == 1
    assert repetition_loops("okay okay okay, fine. okay okay okay") == 0
    assert repetition_loops("And so my fellow Americans, ask not") == 0


def test_words_within_stretches_spare_their_edges() -> None:
    stretches = [(10.0, 20.0)]
    words = [(12.0, 12.5), (10.0, 10.4), (19.7, 20.1), (25.0, 25.5)]
    assert words_within(words, stretches) == 1
    assert words_within(words, stretches, margin=0.0) == 3
