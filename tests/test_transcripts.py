"""Transcript file formats and the all-or-nothing writer."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from whisperfarm import transcripts
from whisperfarm.transcripts import (
    Segment,
    Transcript,
    Word,
    load_json,
    to_json,
    to_srt,
    to_tsv,
    to_txt,
    to_vtt,
    write_outputs,
)


@pytest.fixture
def transcript() -> Transcript:
    return Transcript(
        [
            Segment(
                0.0,
                2.5,
                " Hello there.",
                [Word(0.0, 1.0, " Hello", 0.98), Word(1.1, 2.5, " there.", 0.9)],
            ),
            Segment(3.0, 4.0, "   "),  # blank: no cue
            Segment(61.25, 65.0016, "Second line --> with an arrow"),
            Segment(3725.042, 3727.9996, "Over an hour\tin."),
        ],
        episode={"id": "ep1", "name": "show"},
        language="en",
    )


def test_txt_is_one_line_per_non_blank_segment(transcript: Transcript) -> None:
    assert to_txt(transcript) == (
        "Hello there.\nSecond line --> with an arrow\nOver an hour\tin.\n"
    )


def test_srt_numbers_cues_from_one_with_comma_millis_and_blank_lines(
    transcript: Transcript,
) -> None:
    assert to_srt(transcript) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n"
        "\n"
        "2\n00:01:01,250 --> 00:01:05,002\nSecond line --> with an arrow\n"
        "\n"
        "3\n01:02:05,042 --> 01:02:08,000\nOver an hour in.\n"  # words, wrapped anew
    )


def test_vtt_has_a_header_dot_millis_and_no_arrow_in_cue_text(transcript: Transcript) -> None:
    text = to_vtt(transcript)
    assert text.startswith("WEBVTT\n\n")
    assert text == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n"
        "\n"
        "00:01:01.250 --> 00:01:05.002\nSecond line -> with an arrow\n"
        "\n"
        "01:02:05.042 --> 01:02:08.000\nOver an hour in.\n"
    )
    timing = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}$")
    assert all(timing.match(line) for line in text.splitlines() if "-->" in line)


def test_tsv_has_a_header_integer_millis_and_no_tabs_in_text(transcript: Transcript) -> None:
    lines = to_tsv(transcript).splitlines()
    assert lines == [
        "start\tend\ttext",
        "0\t2500\tHello there.",
        "61250\t65002\tSecond line --> with an arrow",
        "3725042\t3728000\tOver an hour in.",
    ]
    assert all(len(line.split("\t")) == 3 for line in lines)


def test_timestamps_never_go_negative() -> None:
    text = to_srt(Transcript([Segment(-0.2, 0.4, "early")]))
    assert "00:00:00,000 --> 00:00:00,400" in text


def test_json_document_and_round_trip(transcript: Transcript, tmp_path: Path) -> None:
    document = json.loads(to_json(transcript))
    assert document["episode"] == {"id": "ep1", "name": "show"}
    assert document["language"] == "en"
    assert document["text"] == transcript.text
    assert [s["id"] for s in document["segments"]] == [0, 1, 2]
    assert document["segments"][1]["end"] == 65.002  # rounded to ms
    assert "words" not in document["segments"][1]

    path = tmp_path / "t.json"
    path.write_text(to_json(transcript), encoding="utf-8")
    loaded = load_json(path)
    assert loaded.language == "en"
    assert loaded.episode == transcript.episode
    assert [(s.start, s.end, s.text) for s in loaded.segments] == [
        (0.0, 2.5, "Hello there."),
        (61.25, 65.002, "Second line --> with an arrow"),
        (3725.042, 3728.0, "Over an hour\tin."),
    ]
    assert loaded.segments[0].words == [
        Word(0.0, 1.0, " Hello", 0.98),
        Word(1.1, 2.5, " there.", 0.9),
    ]
    assert loaded.segments[1].words is None
    assert json.loads(to_json(loaded))["segments"] == document["segments"]


def test_json_keeps_non_ascii_text(tmp_path: Path) -> None:
    transcript = Transcript([Segment(0.0, 1.0, "Grüße, 世界")], language="de")
    assert "Grüße, 世界" in to_json(transcript)
    path = tmp_path / "t.json"
    path.write_text(to_json(transcript), encoding="utf-8")
    assert load_json(path).segments[0].text == "Grüße, 世界"


def test_transcript_text_joins_non_empty_segments() -> None:
    transcript = Transcript([Segment(0, 1, "a"), Segment(1, 2, ""), Segment(2, 3, "b")])
    assert transcript.text == "a b"


def test_write_outputs_writes_every_format_and_no_partials(
    transcript: Transcript, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "deeper"
    paths = write_outputs(transcript, out, "show", list(transcripts.WRITERS))

    assert paths == [out / f"show.{name}" for name in ("txt", "srt", "vtt", "json", "tsv")]
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)
    for path in paths:
        name = path.suffix[1:]
        assert path.read_text(encoding="utf-8") == transcripts.WRITERS[name](transcript)


def test_write_outputs_only_the_formats_asked(transcript: Transcript, tmp_path: Path) -> None:
    paths = write_outputs(transcript, tmp_path, "show", ["srt"])
    assert paths == [tmp_path / "show.srt"]
    assert os.listdir(tmp_path) == ["show.srt"]


def test_write_outputs_writes_nothing_final_if_a_writer_fails(
    transcript: Transcript, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(_: Transcript) -> str:
        calls.append("json")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(transcripts.WRITERS, "json", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_outputs(transcript, tmp_path, "show", ["txt", "srt", "json", "vtt"])

    assert calls == ["json"]
    assert os.listdir(tmp_path) == []


def test_a_failed_rewrite_leaves_the_previous_transcript_whole(
    transcript: Transcript, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_outputs(transcript, tmp_path, "show", ["txt", "json"])
    before = {name: (tmp_path / name).read_text() for name in os.listdir(tmp_path)}

    def broken(_: Transcript) -> str:
        raise OSError("no space left")

    monkeypatch.setitem(transcripts.WRITERS, "json", broken)
    changed = Transcript([Segment(0.0, 1.0, "something else")])
    with pytest.raises(OSError):
        write_outputs(changed, tmp_path, "show", ["txt", "json"])

    assert {name: (tmp_path / name).read_text() for name in os.listdir(tmp_path)} == before


# Subtitles: srt and vtt cut and wrap cues (whisperfarm.subtitles); the rest do not ----

SPEECH_137 = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what "
    "you can do for your country, and the rest of it goes on!!"
)


def test_srt_and_vtt_wrap_a_long_segment_the_other_formats_keep_it_whole() -> None:
    transcript = Transcript([Segment(0.0, 9.0, SPEECH_137)])
    for text in (to_srt(transcript), to_vtt(transcript)):
        lines = [line for line in text.splitlines() if line and "-->" not in line]
        shown = [line for line in lines if not line.isdigit() and line != "WEBVTT"]
        assert all(len(line) <= 42 for line in shown), shown
        assert " ".join(shown) == SPEECH_137
        assert text.count("-->") == 2
    assert to_txt(transcript) == SPEECH_137 + "\n"
    assert to_tsv(transcript).splitlines()[1] == f"0\t9000\t{SPEECH_137}"
    assert json.loads(to_json(transcript))["segments"][0]["text"] == SPEECH_137


def test_write_outputs_passes_the_cue_style_to_srt_and_vtt(tmp_path: Path) -> None:
    transcript = Transcript([Segment(0.0, 4.0, "one two three four five six")])
    style = transcripts.CueStyle(max_line_width=9, max_line_count=1)
    write_outputs(transcript, tmp_path, "t", ["srt", "vtt", "txt"], subtitles=style)
    srt = (tmp_path / "t.srt").read_text()
    shown = [line for line in srt.splitlines() if line[:1].isalpha()]
    assert " ".join(shown) == "one two three four five six"
    assert len(shown) == srt.count("-->") == 4 and all(len(line) <= 9 for line in shown)
    assert (tmp_path / "t.vtt").read_text().count("-->") == 4
    assert (tmp_path / "t.txt").read_text() == "one two three four five six\n"


def test_highlight_words_only_when_asked(transcript: Transcript) -> None:
    assert "<u>" not in to_srt(transcript) + to_vtt(transcript)
    karaoke = to_srt(transcript, transcripts.CueStyle(highlight_words=True))
    assert karaoke.startswith(
        "1\n00:00:00,000 --> 00:00:01,000\n<u>Hello</u> there.\n\n"
        "2\n00:00:01,000 --> 00:00:01,100\nHello there.\n\n"
        "3\n00:00:01,100 --> 00:00:02,500\nHello <u>there.</u>\n"
    )
    vtt = to_vtt(transcript, transcripts.CueStyle(highlight_words=True))
    assert "00:00:01.100 --> 00:00:02.500\nHello <u>there.</u>\n" in vtt


def test_vtt_escapes_ampersands_and_angle_brackets() -> None:
    vtt = to_vtt(Transcript([Segment(0.0, 2.0, "AT&T said <laughs> a->b -->")]))
    assert "AT&amp;T said &lt;laughs&gt; a-&gt;b ->" in vtt
