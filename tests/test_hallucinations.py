"""The hallucination rules, each a pure function on one chunk's result (no model)."""

from __future__ import annotations

from typing import Any

import pytest

from whisperfarm import hallucinations
from whisperfarm.hallucinations import (
    clean,
    loops,
    past_the_audio,
    silence_hallucination,
)


def seg(start: float, end: float, text: str, **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "text": text, **extra}


def word(start: float, end: float, text: str, probability: float = 0.9) -> dict[str, Any]:
    return {"start": start, "end": end, "word": text, "probability": probability}


def texts(segments: list[dict[str, Any]]) -> list[str]:
    return [s["text"] for s in segments]


# past_the_audio ------------------------------------------------------------------------------


def test_segments_starting_at_or_past_the_audio_end_are_dropped() -> None:
    segments = [seg(0.0, 10.0, " real"), seg(27.0, 29.5, " tail"), seg(28.64, 30.0, " Okay.")]
    assert texts(past_the_audio(segments, 28.64)) == [" real", " tail"]


def test_words_past_the_audio_go_and_the_segment_is_rebuilt_from_the_rest() -> None:
    segment = seg(
        20.0,
        31.0,
        " so the end Okay.",
        words=[word(20.0, 20.4, " so"), word(20.5, 21.0, " the end"), word(29.0, 31.0, " Okay.")],
    )
    (kept,) = past_the_audio([segment], 25.0)
    assert kept["text"] == " so the end"
    assert (kept["start"], kept["end"]) == (20.0, 21.0)
    assert [w["word"] for w in kept["words"]] == [" so", " the end"]


def test_a_segment_whose_words_all_lie_past_the_audio_is_dropped() -> None:
    segment = seg(24.0, 31.0, " Okay.", words=[word(26.0, 31.0, " Okay.")])
    assert past_the_audio([segment], 25.0) == []


# loops ----------------------------------------------------------------------------------------


def test_a_loop_of_the_same_text_is_kept_once() -> None:
    okays = [seg(10.0 + n, 11.0 + n, " Okay.") for n in range(25)]
    segments = [seg(0.0, 9.0, " Before."), *okays, seg(40.0, 41.0, " After.")]
    assert texts(loops(segments, 60.0)) == [" Before.", " Okay.", " After."]


def test_loops_compare_words_not_case_or_punctuation() -> None:
    segments = [seg(0, 1, " Okay."), seg(1, 2, " okay"), seg(2, 3, " OKAY!"), seg(3, 4, " Bye.")]
    assert texts(loops(segments, 10.0)) == [" Okay.", " Bye."]


def test_a_phrase_said_twice_is_not_a_loop() -> None:
    segments = [seg(0, 1, " Yes."), seg(1, 2, " Yes."), seg(2, 3, " No."), seg(3, 4, " Yes.")]
    assert loops(segments, 10.0) == segments


def test_a_loop_inside_a_segment_is_written_once() -> None:
    looped = " softwares on these the rest" + "-en-dere" * 12 + "-en."
    (kept,) = loops([seg(0.0, 5.0, looped)], 10.0)
    assert kept["text"] == " softwares on these the rest-en-dere-en."


def test_a_looped_phrase_of_words_keeps_its_first_words() -> None:
    phrase = [" I", " can't", " go"]
    words = [word(0.0, 0.4, " So")] + [
        word(0.5 + n * 0.3, 0.7 + n * 0.3, phrase[n % 3]) for n in range(15)
    ]
    (kept,) = loops([seg(0.0, 5.0, "".join(w["word"] for w in words), words=words)], 10.0)
    assert kept["text"] == " So I can't go"
    assert [w["start"] for w in kept["words"]] == [0.0, 0.5, 0.8, 1.1]


def test_a_loop_over_several_segments_keeps_its_first_copy() -> None:
    """tiny.en on French, in CI: "sufervin," five times over three segments, each too
    short to be a loop on its own, and no two segments the same."""

    def words_of(start: float, *texts_: str) -> list[dict[str, Any]]:
        return [word(start + n * 0.5, start + n * 0.5 + 0.4, t) for n, t in enumerate(texts_)]

    parts = [
        words_of(0.0, " under", " order"),
        words_of(1.0, " sufervin,", " sufervin,"),
        words_of(2.0, " sufervin,"),
        words_of(3.0, " sufervin,", " sufervin,"),
        words_of(4.0, " the", " end."),
    ]
    segments = [
        seg(w[0]["start"], w[-1]["end"], "".join(x["word"] for x in w), words=w) for w in parts
    ]
    kept = loops(segments, 10.0)
    assert texts(kept) == [" under order", " sufervin,", " the end."]
    assert [w["start"] for w in kept[1]["words"]] == [1.0]
    # the same without word times
    plain = [seg(s["start"], s["end"], s["text"]) for s in segments]
    assert texts(loops(plain, 10.0)) == [" under order", " sufervin,", " the end."]


def test_a_phrase_said_three_times_over_segments_is_no_loop() -> None:
    segments = [seg(0, 1, " Yes, yes."), seg(1, 2, " Yes."), seg(2, 3, " No.")]
    assert loops(segments, 10.0) == segments


def test_numbers_and_short_repeats_are_no_loop() -> None:
    segments = [seg(0.0, 5.0, " It cost 1000000 dollars, ha ha ha, no no no."), seg(5, 6, " Hm.")]
    assert loops(segments, 10.0) == segments


# silence_hallucination ------------------------------------------------------------------------


def doubtful(start: float, text: str = " Thank you.") -> dict[str, Any]:
    """A segment of improbable, very short words: an anomaly score over the threshold."""
    words = [
        word(start, start + 0.05, " Thank", 0.05),
        word(start + 0.05, start + 0.1, " you.", 0.05),
    ]
    return seg(start, start + 0.1, text, words=words)


def spoken(start: float, end: float, text: str) -> dict[str, Any]:
    """A segment of confident words of a usual length, one every 0.4 s."""
    count = max(1, round((end - start) / 0.4))
    words = [word(start + n * 0.4, start + n * 0.4 + 0.35, f" w{n}", 0.95) for n in range(count)]
    return seg(start, end, text, words=words)


def test_an_anomalous_segment_between_silences_is_dropped() -> None:
    segments = [spoken(0.0, 3.0, " Real words"), doubtful(8.0), spoken(14.0, 16.0, " More")]
    assert texts(silence_hallucination(segments, 20.0)) == [" Real words", " More"]


def test_an_anomalous_segment_amid_speech_is_kept() -> None:
    segments = [spoken(0.0, 3.0, " Real words"), doubtful(3.5), spoken(4.0, 6.0, " More")]
    assert silence_hallucination(segments, 20.0) == segments


def test_a_confident_segment_between_silences_is_kept() -> None:
    segments = [spoken(0.0, 3.0, " Real words"), spoken(8.0, 9.0, " Hello"), spoken(14, 15, " x")]
    assert silence_hallucination(segments, 20.0) == segments


def test_results_without_word_times_pass_untouched() -> None:
    segments = [seg(0.0, 3.0, " Real words"), seg(8.0, 8.1, " Thank you.")]
    assert silence_hallucination(segments, 20.0) == segments


# clean ----------------------------------------------------------------------------------------


def test_clean_applies_the_rules_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    okays = [seg(10.0 + n, 11.0 + n, " Okay.") for n in range(25)]
    segments = [seg(0.0, 9.0, " Before."), *okays]
    assert texts(clean(segments, 28.64)) == [" Before.", " Okay."]
    monkeypatch.setattr(hallucinations, "RULES", (past_the_audio,))
    assert len(clean(segments, 28.64)) == 1 + 19  # only the ones past 28.64 s go
