"""End to end on the hard podcast: the real CLI as a process, two real workers, tiny.en,
ffmpeg and SQLite, on the short "hard podcast" that scripts/make_real.py strings together
from samples/real/ (a 31 s music intro, two sentences, 20 s of street ambience, the jfk
speech, a music outro; its ground truth says where nobody speaks).

Before the speech model, the farm sent the intro's music to a worker and wrote the
"Thank you." Whisper invents over it into the transcript."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from whisperfarm.evaluation import (
    cue_spans,
    timeline_violations,
    tsv_spans,
    word_error_rate,
    words_within,
)

TIMEOUT = 300


@pytest.fixture(scope="module")
def podcast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real")
    subprocess.run(
        [
            *(sys.executable, str(REPO / "scripts" / "make_real.py")),
            *("--out", str(out), "--sets", "podcast", "--short"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out / "podcast-short.wav"


def transcribe(source: Path, home: Path, out: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "whisperfarm", "transcribe", str(source), "-m", "tiny.en"),
            *("--workers", "2", "--threads", "1", "--words", "--format", "all"),
            *("--out", str(out)),
        ],
        env={**os.environ, "WHISPERFARM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def transcribed(podcast: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One run for the tests below: (WHISPERFARM_HOME, output folder)."""
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("out")
    transcribe(podcast, home, out)
    return home, out


def test_the_hard_podcast_has_no_words_where_nobody_speaks(
    podcast: Path, transcribed: tuple[Path, Path]
) -> None:
    home, out = transcribed
    truth: dict[str, Any] = json.loads(podcast.with_suffix(".truth.json").read_text())
    document = json.loads((out / "podcast-short.json").read_text())
    words = [w for s in document["segments"] for w in s["words"]]
    stretches = [(s["start"], s["end"]) for s in truth["nonspeech"]]

    stray = [
        (w["word"], w["start"]) for w in words if words_within([(w["start"], w["end"])], stretches)
    ]
    assert stray == []
    # one line of words: the txt wraps its paragraphs, wherever the segments fall
    text = " ".join((out / "podcast-short.txt").read_text().lower().split())
    assert "the child almost hurt the small dog" in text
    assert "fellow americans" in text and "ask what you can do for your country" in text
    assert word_error_rate(truth["reference"], text) < 0.1

    with sqlite3.connect(home / "ledger.db") as conn:
        chunks = conn.execute("SELECT start, end, speech, attempt FROM chunks").fetchall()
    intro = [c for c in chunks if c[1] <= stretches[0][1]]
    assert intro and all(speech == 0 and attempt == 0 for _, _, speech, attempt in intro), (
        "a chunk of nothing but music is never sent"
    )


def test_every_format_keeps_the_timeline_on_the_hard_podcast(
    podcast: Path, transcribed: tuple[Path, Path]
) -> None:
    _, out = transcribed
    duration = json.loads(podcast.with_suffix(".truth.json").read_text())["duration"]
    document = json.loads((out / "podcast-short.json").read_text())
    spans = {
        "json segments": [(s["start"], s["end"]) for s in document["segments"]],
        "json words": [(w["start"], w["end"]) for s in document["segments"] for w in s["words"]],
        "srt": cue_spans((out / "podcast-short.srt").read_text()),
        "vtt": cue_spans((out / "podcast-short.vtt").read_text()),
        "tsv": tsv_spans((out / "podcast-short.tsv").read_text()),
    }
    assert all(spans.values())
    assert {name: timeline_violations(s, duration) for name, s in spans.items()} == dict.fromkeys(
        spans, 0
    )
