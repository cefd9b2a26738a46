"""Runs as a user makes them, through the real CLI with real workers (issue #14, "wrong
today"): outputs named after this input, a batch that goes on past a bad file, ``--out``
checked before anything starts, chunk audio deleted once an episode is done (results
kept, reused without audio), and ``clean`` for what is left over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support import ledger_db
from tests.support.episodes import make_episode
from tests.support.paths import REPO, SAMPLE
from whisperfarm.cli import app
from whisperfarm.ledger import Ledger

TIMEOUT = 300
CLIP = REPO / "samples" / "real" / "sb-spk1_snt1.flac"  # "The child almost hurt the small dog."
runner = CliRunner()


def transcribe(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "whisperfarm", "transcribe", *args),
            *("-m", "tiny.en", "--workers", "1", "--format", "txt,json"),
        ],
        env={**os.environ, "WHISPERFARM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def errors(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_outputs_take_this_inputs_name_and_a_rerun_says_it_reused_the_results(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = tmp_path / "short1s.flac"
    shutil.copy(CLIP, first)
    one = transcribe(str(first), "-o", str(tmp_path / "one"), home=home)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "dog" in (tmp_path / "one" / "short1s.txt").read_text().lower()

    copy = tmp_path / "grüße — greeting.flac"
    shutil.copy(CLIP, copy)
    two = transcribe(str(copy), "-o", str(tmp_path / "two"), home=home)
    assert two.returncode == 0, two.stdout + two.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "grüße — greeting.json",
        "grüße — greeting.txt",
    ]
    assert "dog" in (tmp_path / "two" / "grüße — greeting.txt").read_text().lower()
    assert "stored results reused (1 chunk(s)), nothing transcribed" in two.stdout
    assert "realtime" not in two.stdout
    # One episode, shared by content; done, so its chunk audio is gone and its results
    # stay: the rerun above took them without any audio.
    ((episode_id, state),) = ledger_db.rows(home, "SELECT id, state FROM episodes")
    assert state == "done"
    assert not (home / "episodes" / episode_id / "chunks").exists()
    assert ledger_db.rows(home, "SELECT count(*) FROM results") == [(1,)]


def test_a_rerun_that_must_transcribe_again_cuts_the_file_again(tmp_path: Path) -> None:
    """Changed options need every chunk transcribed again, and the done episode's chunk
    audio is gone: the file is cut again rather than the chunks failing."""
    home, out = tmp_path / "home", tmp_path / "out"
    clip = tmp_path / "clip.flac"
    shutil.copy(CLIP, clip)
    assert transcribe(str(clip), "-o", str(out), home=home).returncode == 0
    again = transcribe(str(clip), "-o", str(out), "--words", home=home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "realtime" in again.stdout and "reused" not in again.stdout
    assert "dog" in (out / "clip.txt").read_text().lower()
    assert '"words"' in (out / "clip.json").read_text()
    assert ledger_db.rows(home, "SELECT state, attempt FROM chunks") == [("done", 1)]


def test_one_bad_file_does_not_stop_the_batch(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    good = tmp_path / "good.flac"
    shutil.copy(CLIP, good)
    broken = tmp_path / "broken.mp3"
    broken.write_text("not audio at all\n" * 50)
    missing = tmp_path / "missing.mp3"
    result = transcribe(str(broken), str(good), str(missing), "-o", str(out), home=home)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "dog" in (out / "good.txt").read_text().lower()
    assert "done: 1 of 1 episode(s)" in result.stdout
    lines = errors(result)
    assert len(lines) == 2, result.stderr
    assert str(broken) in lines[0] and "not audio" in lines[0]
    assert str(missing) in lines[1] and "no such file" in lines[1]


def test_a_batch_of_bad_files_only_says_so_for_each(tmp_path: Path, home: Path) -> None:
    bad = [tmp_path / "a.mp3", tmp_path / "b.mp3"]
    bad[0].write_bytes(b"")
    result = runner.invoke(app, ["transcribe", *map(str, bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "empty" in lines[0] and "no such file" in lines[1]
    assert not (home / "ledger.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "0"],
        ["serve", str(SAMPLE), "-m", "tiny.en"],
        ["export", "interview"],
    ],
    ids=["transcribe", "serve", "export"],
)
def test_an_out_that_is_a_file_is_refused_before_anything_starts(
    tmp_path: Path, home: Path, args: list[str]
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    result = runner.invoke(app, [*args, "-o", str(taken)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: --out {taken} is a file: give a directory (created if missing)"]
    assert taken.read_text() == "mine\n"
    assert not (home / "ledger.db").exists(), "nothing started"


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("notes.txt/subtitles", "can't be created: {tmp}/notes.txt is a file"),
        # Nobody, root included, can create files in /proc.
        ("/proc/whisperfarm-test/out", "can't write transcripts in --out /proc/whisperfarm-test"),
    ],
    ids=["under-a-file", "unwritable"],
)
def test_an_out_that_cannot_be_written_is_refused_before_anything_starts(
    tmp_path: Path, home: Path, out: str, expected: str
) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    target = out if out.startswith("/") else str(tmp_path / out)
    result = runner.invoke(
        app, ["transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "0", "-o", target]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected.format(tmp=tmp_path) in lines[0], result.output
    assert not (home / "ledger.db").exists(), "nothing started"


def _chunk_audio(home: Path, episode_id: str, size: int) -> Path:
    folder = home / "episodes" / episode_id / "chunks"
    folder.mkdir(parents=True)
    (folder / "00000.wav").write_bytes(b"\0" * size)
    return folder


def test_clean_says_what_it_would_free_then_frees_it(ledger: Ledger, home: Path) -> None:
    make_episode(ledger, "finished", [10.0])
    ledger.update_episode("finished", state="done")
    make_episode(ledger, "unfinished", [10.0])
    done_audio = _chunk_audio(home, "finished", 1_900_000)
    kept_audio = _chunk_audio(home, "unfinished", 500_000)
    orphan = _chunk_audio(home, "removed-long-ago", 300_000).parent

    dry = runner.invoke(app, ["clean", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would free 2.2 MB in 2 place(s) (--dry-run)" in dry.output
    assert "chunk audio of finished (done)" in dry.output
    assert "no episode in the ledger" in dry.output
    assert done_audio.exists() and orphan.exists()

    result = runner.invoke(app, ["clean"])
    assert result.exit_code == 0, result.output
    assert "freed 2.2 MB in 2 place(s)" in result.output
    assert not done_audio.exists() and not orphan.exists()
    assert kept_audio.exists(), "an unfinished episode keeps the audio it resumes from"
    assert ledger.results("finished") is not None
    assert runner.invoke(app, ["clean"]).output.strip() == "nothing to clean"


def test_clean_empties_the_download_cache_only_when_asked(ledger: Ledger, home: Path) -> None:
    download = home / "downloads" / "ab12" / "episode.mp3"
    download.parent.mkdir(parents=True)
    download.write_bytes(b"x" * 4_000)
    assert runner.invoke(app, ["clean"]).output.strip() == "nothing to clean"
    result = runner.invoke(app, ["clean", "--downloads"])
    assert "freed 4.0 kB in 1 place(s)" in result.output
    assert not download.exists()
