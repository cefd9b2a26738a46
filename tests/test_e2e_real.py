"""End to end on real recordings: the real CLI, coordinator and worker processes and the
real tiny.en model write every format, and every one keeps the timeline: each segment,
cue and word has 0 ≤ start ≤ end ≤ the episode's duration, starts never go backwards,
every word lies inside its segment, and no text is looped.

- ``samples/real/multilingual.mp3``: faster-whisper's test recording (60 s, English then
  French: tiny.en writes nonsense for the French, which is where it loops).
- ``samples/real/radio-tail.flac``: issue 11's reproduction, one chunk's audio (27.66 s) of
  real recordings under generated radio noise, ending in JFK's "…ask not what your
  country can do for you". faster-whisper gives its last segment the end 27.12 s and its
  last word " you." 27.04-27.51 s, outside the segment, and the stitcher used to write it
  so.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from whisperfarm.evaluation import cue_spans, repetition_loops, timeline_violations, tsv_spans

REAL = REPO / "samples" / "real"
RECORDINGS = [REAL / "multilingual.mp3", REAL / "radio-tail.flac"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("e2e-real")
    env = {**os.environ, "WHISPERFARM_HOME": str(base / "home")}
    command = [sys.executable, "-m", "whisperfarm", "transcribe", *map(str, RECORDINGS)]
    options = ["--model", "tiny.en", "--workers", "2", "--words", "--format", "all"]
    result = subprocess.run(
        [*command, *options, "--out", str(base / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "out"


def read(out: Path, recording: Path, fmt: str) -> str:
    return (out / f"{recording.stem}.{fmt}").read_text(encoding="utf-8")


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.name)
def test_every_format_keeps_the_timeline(outputs: Path, recording: Path) -> None:
    document: dict[str, Any] = json.loads(read(outputs, recording, "json"))
    duration = document["episode"]["duration"]
    segments = document["segments"]
    assert segments, "the recording has speech"
    spans = {
        "srt": cue_spans(read(outputs, recording, "srt")),
        "vtt": cue_spans(read(outputs, recording, "vtt")),
        "tsv": tsv_spans(read(outputs, recording, "tsv")),
        "json segments": [(s["start"], s["end"]) for s in segments],
        "json words": [(w["start"], w["end"]) for s in segments for w in s["words"]],
    }
    assert {name: timeline_violations(s, duration) for name, s in spans.items()} == dict.fromkeys(
        spans, 0
    )
    assert len(spans["tsv"]) == len(segments)
    assert spans["srt"] == spans["vtt"] and len(spans["srt"]) >= len(segments)  # cut to read
    for before, after in itertools.pairwise(spans["srt"]):
        assert before[1] <= after[0], "cues overlap"
    outside = [
        (w["word"], w["start"], w["end"], s["start"], s["end"])
        for s in segments
        for w in s["words"]
        if not s["start"] <= w["start"] <= w["end"] <= s["end"]
    ]
    assert outside == [], "words outside their segment"
    txt = read(outputs, recording, "txt")
    assert txt.splitlines() == [s["text"] for s in segments]
    assert repetition_loops(txt) == 0


def words_of(text: str) -> str:
    """The words alone, lower case: punctuation and line breaks move with the cuts."""
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def test_the_real_speech_is_still_there(outputs: Path) -> None:
    tail = words_of(read(outputs, REAL / "radio-tail.flac", "txt"))
    assert "ask not what your country can do for you" in tail
    licence = words_of(read(outputs, REAL / "multilingual.mp3", "txt"))
    assert "permission is hereby granted" in licence
