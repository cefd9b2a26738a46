"""Subtitle cues (whisperfarm.subtitles): split at word boundaries, wrapped into lines,
timed within their segments on a valid timeline.

Hypothesis properties for any segments, any line width and count, with and without word
timings; then the cases the issue names (a 137-character segment, a word longer than a
line, no word timings) and the rules one by one."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.strategies import SPEECH, chunk_plans
from whisperfarm.evaluation import timeline_violations
from whisperfarm.stitch import ChunkResult, stitch
from whisperfarm.subtitles import Cue, CueStyle, cues, karaoke
from whisperfarm.transcripts import Segment, Word

VOCABULARY = [
    "so", "the", "weather", "today,", "is", "fine.", "Really?", "and", "I", "think",
    "we", "should", "go;", "out", "—", "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "a", "well-known", "\"quote.\"", "x" * 70,
]  # fmt: skip


@st.composite
def episodes(draw: st.DrawFn) -> list[Segment]:
    """Segments in order, not overlapping, as the stitcher gives them; some with word
    timings (inside the segment, in order, with pauses), some without."""
    segments = []
    clock = draw(st.floats(0.0, 5.0))
    for _ in range(draw(st.integers(1, 5))):
        texts = draw(st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=40))
        start = clock + draw(st.floats(0.0, 3.0))
        words = None
        if draw(st.booleans()):
            words, t = [], start
            for text in texts:
                begins = t + draw(st.sampled_from([0.0, 0.0, 0.1, 0.8, 2.5]))
                t = begins + draw(st.floats(0.0, 1.5))
                words.append(Word(begins, t, f" {text}", 0.9))
            end = t + draw(st.sampled_from([0.0, 0.3]))
        else:
            end = start + draw(st.floats(0.0, 30.0))
        segments.append(Segment(start, end, " " + " ".join(texts), words))
        clock = end
    return segments


STYLES = st.builds(
    CueStyle,
    max_line_width=st.integers(8, 60),
    max_line_count=st.integers(1, 3),
)


def tokens_of(cue: Cue) -> list[str]:
    return [token.text for token in cue.tokens]


@given(episodes(), STYLES)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_cues_fit_keep_every_word_and_stay_in_their_segment(
    segments: list[Segment], style: CueStyle
) -> None:
    made = cues(segments, style)
    for cue in made:
        assert 1 <= len(cue.lines) <= style.max_line_count
        for line in cue.lines:
            assert line, "an empty line"
            shown = " ".join(token.text for token in line)
            assert len(shown) <= style.max_line_width or len(line) == 1, shown
    for number, segment in enumerate(segments):
        own = [cue for cue in made if cue.segment == number]
        assert [word for cue in own for word in tokens_of(cue)] == segment.text.split()
    for n, cue in enumerate(made):
        segment = segments[cue.segment]
        following = made[n + 1].start if n + 1 < len(made) else segment.end
        assert segment.start <= cue.start <= cue.end <= max(segment.end, following)
        assert cue.end - cue.start <= style.max_duration + 1e-9
        if n + 1 < len(made):
            assert cue.end <= made[n + 1].start, "cues overlap"
            assert cue.start <= made[n + 1].start, "a start goes backwards"


@given(chunk_plans(), SPEECH, STYLES)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_cues_keep_the_timeline_whatever_the_stitcher_gives(
    chunks: list[ChunkResult], speech: list[tuple[float, float]] | None, style: CueStyle
) -> None:
    """Stitched segments may overlap and start together; their cues may not."""
    duration = max(c.end for c in chunks)
    segments = stitch(chunks, keep_words=True, speech=speech)
    made = cues(segments, style, horizon=duration)
    assert timeline_violations([(c.start, c.end) for c in made], duration) == 0
    for before, after in itertools.pairwise(made):
        assert before.end <= after.start
    assert [w for c in made for w in tokens_of(c)] == [w for s in segments for w in s.text.split()]


def timed(
    text: str, start: float = 0.0, pace: float = 0.3, pauses: dict[int, float] | None = None
) -> Segment:
    """A segment with a word every ``pace`` seconds, and a pause after word n of
    ``pauses[n]`` seconds."""
    words, t = [], start
    for n, word in enumerate(text.split()):
        words.append(Word(t, t + pace * 0.9, f" {word}", 0.9))
        t += pace + (pauses or {}).get(n, 0.0)
    return Segment(start, words[-1].end, " " + text, words)


# 137 characters, the longest segment in the sample's srt before this module.
LONG = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what "
    "you can do for your country, and the rest of it goes on!!"
)
UNPUNCTUATED = LONG.replace(",", "").replace("!", "").lower()


def test_a_137_character_segment_without_word_timings() -> None:
    assert len(LONG) == 137
    made = cues([Segment(10.0, 19.0, LONG)], CueStyle())
    assert len(made) == 2
    for cue in made:
        assert len(cue.lines) <= 2
        assert all(len(line) <= 42 for line in cue.text.splitlines())
    assert " ".join(c.text.replace("\n", " ") for c in made) == LONG
    # cut after the clause, not inside one
    assert made[0].tokens[-1].text.endswith(",")
    # times shared out by characters: the second cue starts where its text does
    share = (len(" ".join(tokens_of(made[0]))) + 1) / (len(LONG) + 1)
    assert made[0].start == 10.0 and made[-1].end == 19.0
    assert abs(made[1].start - (10.0 + 9.0 * share)) < 1e-9


def test_without_punctuation_cues_end_at_a_pause_between_words() -> None:
    # the pause comes after "do for you" (word 13)
    segment = timed(UNPUNCTUATED, start=10.0, pace=0.25, pauses={13: 0.6})
    made = cues([segment], CueStyle())
    assert tokens_of(made[0])[-3:] == ["do", "for", "you"]
    assert segment.words is not None
    assert made[1].start == segment.words[14].start
    assert all(len(line) <= 42 for c in made for line in c.text.splitlines())
    paused_elsewhere = cues([timed(UNPUNCTUATED, pauses={11: 0.6})], CueStyle())
    assert tokens_of(paused_elsewhere[0])[-1] == "do"


def test_a_sentence_end_beats_a_comma() -> None:
    text = "It rained all day. So we stayed in, the two of us."
    made = cues([timed(text)], CueStyle(max_line_count=1))
    assert tokens_of(made[0]) == ["It", "rained", "all", "day."]


def test_a_word_longer_than_a_line_gets_a_line_of_its_own() -> None:
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 characters
    made = cues([timed(f"he said {long_word} twice")], CueStyle())
    lines = [line for cue in made for line in cue.text.splitlines()]
    assert long_word in lines
    assert all(len(line) <= 42 for line in lines if line != long_word)


def test_a_cue_that_fits_one_line_stays_on_one_line() -> None:
    made = cues([timed("Hello, and welcome back to our show.")], CueStyle())
    assert [cue.text for cue in made] == ["Hello, and welcome back to our show."]


def test_two_lines_break_after_punctuation_and_evenly() -> None:
    text = "My fellow Americans, ask not what your country can do for you."
    (cue,) = cues([timed(text)], CueStyle())
    assert cue.text == "My fellow Americans,\nask not what your country can do for you."


def test_a_long_timed_stretch_is_cut_at_seven_seconds() -> None:
    slow = timed("one two three four five six seven eight nine ten", pace=1.5)
    made = cues([slow], CueStyle())
    assert len(made) >= 3
    assert all(cue.end - cue.start <= 7.0 for cue in made)


def test_an_untimed_short_text_over_a_long_segment_stays_one_cue_held_seven_seconds() -> None:
    (cue,) = cues([Segment(1.0, 16.0, "lecture part 3 ends.")], CueStyle())
    assert (cue.start, cue.end, cue.text) == (1.0, 8.0, "lecture part 3 ends.")


def test_a_fast_cue_is_held_into_the_silence_after_it_but_not_into_the_next() -> None:
    # 40 characters said in 1 s: at 17 characters a second it needs 40/17 s on screen
    fast = Segment(0.0, 1.0, "Forty characters said in one second, yes")
    after = Segment(1.5, 2.0, "Next.")
    first, second = cues([fast, after], CueStyle())
    assert first.end == 1.5 - 0.08  # up to 2 frames before the next
    assert second.start == 1.5
    alone = cues([fast], CueStyle(), horizon=60.0)
    assert alone[0].end == 40 / 17
    assert cues([fast], CueStyle())[0].end == 1.0, "no horizon: not past the last word"


def test_a_short_cue_is_held_for_the_minimum_duration() -> None:
    made = cues([Segment(0.0, 0.2, "Yes."), Segment(5.0, 6.0, "No.")], CueStyle())
    assert abs(made[0].end - 5 / 6) < 1e-9


def test_words_that_do_not_spell_the_text_are_not_used() -> None:
    segment = Segment(0.0, 4.0, "Hello there world", [Word(0.0, 1.0, " Goodbye")])
    (cue,) = cues([segment], CueStyle())
    assert cue.text == "Hello there world" and not cue.timed


def test_karaoke_underlines_each_word_in_turn_and_fills_the_gaps() -> None:
    segment = Segment(
        0.0, 2.0, " Hi there", [Word(0.0, 0.5, " Hi", 0.9), Word(1.0, 2.0, " there", 0.9)]
    )
    (cue,) = cues([segment], CueStyle())
    assert karaoke(cue) == [
        (0.0, 0.5, [["<u>Hi</u>", "there"]]),
        (0.5, 1.0, [["Hi", "there"]]),
        (1.0, 2.0, [["Hi", "<u>there</u>"]]),
    ]
    untimed = cues([Segment(0.0, 2.0, "Hi there")], CueStyle())[0]
    assert karaoke(untimed) == [(0.0, 2.0, [["Hi", "there"]])]


def test_cues_are_cut_where_each_can_be_read_in_its_time() -> None:
    """tiny.en's words for a segment of the sample (152.56-157.16 s): 89 characters, so
    two cues. Cut after "putting", the first cue had 26 characters for 1.0 s (26 a
    second) before the next began."""
    said = [
        (152.56, 152.76, "What"), (152.76, 153.02, "helped"), (153.02, 153.16, "me"),
        (153.16, 153.36, "was"), (153.36, 153.56, "putting"), (153.56, 153.82, "my"),
        (153.82, 154.18, "shoes"), (154.18, 154.7, "and"), (154.7, 154.94, "my"),
        (154.94, 155.2, "jacket"), (155.2, 155.48, "right"), (155.48, 155.76, "next"),
        (155.76, 155.92, "to"), (155.92, 156.04, "the"), (156.04, 156.16, "bed"),
        (156.16, 156.34, "the"), (156.34, 156.54, "night"), (156.54, 157.16, "before,"),
    ]  # fmt: skip
    words = [Word(start, end, f" {text}", 0.9) for start, end, text in said]
    segment = Segment(152.56, 157.16, "".join(w.word for w in words), words)
    made = cues([segment], CueStyle())
    assert len(made) == 2
    for cue in made:
        shown = len(cue.text.replace("\n", " "))
        assert shown / (cue.end - cue.start) <= 20.0, cue  # 19.3 for the whole segment
