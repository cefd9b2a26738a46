"""Inputs at the edge, through the real CLI: what test_cli.py, test_media.py and
test_e2e_local.py don't already try.

- Pure silence is a correct, empty transcript (exit 0), not an error.
- A video file whose name has spaces and non-ASCII characters transcribes end to end, its
  transcripts named after it.
- A bad input never harms a ledger that already holds work: after each failure the ledger
  passes ``PRAGMA integrity_check`` and its finished episode is as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.support.paths import SAMPLE
from whisperfarm.cli import app
from whisperfarm.ledger import ChunkPlan, Ledger
from whisperfarm.media import ffmpeg_exe

TIMEOUT = 300


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=120,
    )


def transcribe(source: Path, home: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "whisperfarm", "transcribe", str(source), "-m", "tiny.en"),
            *("--workers", "1", "--out", str(out), "--format", "all"),
        ],
        env={**os.environ, "WHISPERFARM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_pure_silence_is_an_empty_transcript(tmp_path: Path) -> None:
    silence = tmp_path / "silence.mp3"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "40", str(silence))
    home, out = tmp_path / "home", tmp_path / "out"
    result = transcribe(silence, home, out)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 1 of 1 episode(s)" in result.stdout
    document = json.loads((out / "silence.json").read_text())
    assert document["segments"] == [] and document["text"] == ""
    assert document["episode"]["duration"] == pytest.approx(40, abs=0.5)
    assert (out / "silence.txt").read_text() == ""
    assert (out / "silence.srt").read_text() == ""
    assert (out / "silence.tsv").read_text() == "start\tend\ttext\n"
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("SELECT state FROM episodes").fetchall() == [("done",)]
        chunks = conn.execute("SELECT speech, state, attempt FROM chunks").fetchall()
    assert chunks and set(chunks) == {(0, "done", 0)}, "silent chunks are never sent"


def test_a_video_with_an_odd_name_transcribes(tmp_path: Path) -> None:
    video = tmp_path / "épisode n°1 — ünïcödé (final).mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-i", str(SAMPLE), "-t", "35"),
        *("-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(video)),
    )
    home, out = tmp_path / "home", tmp_path / "out"
    result = transcribe(video, home, out)

    assert result.returncode == 0, result.stdout + result.stderr
    text = (out / f"{video.stem}.txt").read_text()
    assert "welcome back to our little show" in text.lower()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{video.stem}.{ext}" for ext in ("txt", "srt", "vtt", "json", "tsv")
    )
    document = json.loads((out / f"{video.stem}.json").read_text())
    assert document["episode"]["name"] == video.stem
    assert document["episode"]["source"] == str(video)


def test_a_video_whose_picture_outlasts_its_sound_is_not_called_truncated(
    tmp_path: Path,
) -> None:
    """A container lasts as long as its longest track: 30 s of picture over 20 s of
    sound is a whole file, judged by the audio stream's own duration."""
    video = tmp_path / "talk.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=30"),
        *("-t", "20", "-i", str(SAMPLE), "-c:v", "mpeg4", "-c:a", "aac", str(video)),
    )
    home, out = tmp_path / "home", tmp_path / "out"
    result = transcribe(video, home, out)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "welcome back to our little show" in " ".join(
        (out / "talk.txt").read_text().lower().split()
    )
    document = json.loads((out / "talk.json").read_text())
    assert document["episode"]["duration"] == pytest.approx(20, abs=0.5)


def bad_input(kind: str, folder: Path) -> Path:
    """A file (or not) of the given kind in ``folder``."""
    path = folder / f"{kind}.mp3"
    if kind == "directory":
        path.mkdir()
    elif kind == "text named .mp3":
        path.write_text("hello, this is not audio\n" * 100)
    elif kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(7).bytes(40_000))
    elif kind == "truncated mp3":
        path.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 3])
    return path  # "missing": nothing there


BAD_INPUTS = {  # kind → what the one error line says
    "missing": "no such file",
    "directory": "is a directory",
    "text named .mp3": "not audio",
    "zero bytes": "is empty",
    "random bytes": "not audio",
    "truncated mp3": "looks truncated",
}


def finished_episode(home: Path) -> list[tuple[object, ...]]:
    """A ledger that already holds a finished episode; returns its rows."""
    ledger = Ledger(home / "ledger.db")
    ledger.create_episode(
        episode_id="kept",
        name="kept",
        source="/audio/kept.mp3",
        content_hash="hash-kept",
        model="tiny.en",
        options={},
    )
    ledger.add_chunk("kept", ChunkPlan(0, 0.0, 5.0, 0.0, 5.0, speech=False), "/c/0.wav")
    ledger.finish_chunking("kept", duration=5.0, chunk_count=1)
    ledger.update_episode("kept", state="done")
    ledger.close()
    return kept_rows(home)


def kept_rows(home: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(home / "ledger.db") as conn:
        return conn.execute(
            "SELECT e.*, c.* FROM episodes e JOIN chunks c ON c.episode_id = e.id"
            " WHERE e.id = 'kept'"
        ).fetchall()


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_a_bad_input_leaves_an_existing_ledger_intact(
    tmp_path: Path, home: Path, kind: str
) -> None:
    before = finished_episode(home)
    path = bad_input(kind, tmp_path)
    result = CliRunner().invoke(
        app, ["transcribe", str(path), "-m", "tiny.en", "--workers", "0", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and BAD_INPUTS[kind] in errors[0], result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        others = conn.execute("SELECT state FROM episodes WHERE id != 'kept'").fetchall()
    assert kept_rows(home) == before
    assert others in ([], [("failed",)]), "a failed input is recorded as failed, if at all"


def test_an_ffmpeg_that_cannot_encode_opus_fails_in_one_line_naming_the_fix(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ffmpeg built without libopus decodes the input but can't write Opus chunks: the
    run stops with one line that names the setting to change, and the ledger keeps its
    work."""
    before = finished_episode(home)
    wrapper = tmp_path / "ffmpeg-without-opus"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *libopus*) echo "Unknown encoder \'libopus\'" >&2; exit 1;; esac\n'
        f'exec "{ffmpeg_exe()}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("WHISPERFARM_FFMPEG", str(wrapper))
    ffmpeg_exe.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "0", "-o", "o"]
        )
    finally:
        ffmpeg_exe.cache_clear()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "could not encode chunk audio as opus (Unknown encoder 'libopus')" in errors[0]
    assert 'set chunk_format = "flac" or "wav"' in result.output
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        failed = conn.execute("SELECT state FROM episodes WHERE id != 'kept'").fetchall()
    assert failed == [("failed",)]
    assert kept_rows(home) == before
