"""URLs, feeds and standard input through the real CLI: a `whisperfarm transcribe` process
downloading from a real local HTTP server (tests/support/httpfiles.py), local worker processes and
the real tiny.en model."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpfiles import Files, Resource, clip, rss, serving

TIMEOUT = 300


@pytest.fixture
def files() -> Iterator[Files]:
    with serving() as served:
        yield served


def cli(*args: str, home: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "whisperfarm", *args],
        env={**os.environ, "WHISPERFARM_HOME": str(home)},
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def test_a_url_and_standard_input_transcribe_named_after_the_url_and_stdin(
    files: Files, tmp_path: Path
) -> None:
    files.resources["/shows/episode.mp3"] = Resource(
        clip(tmp_path / "a.mp3", seconds=12), drops=1, drop_after=20_000
    )
    piped = clip(tmp_path / "b.mp3", start=20, seconds=10)
    home, out = tmp_path / "home", tmp_path / "out"
    url = files.url("/shows/episode.mp3")
    result = cli(
        *("transcribe", url, "-", "-m", "tiny.en", "--workers", "1", "--out", str(out)),
        home=home,
        stdin=piped,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 2 of 2 episode(s)" in result.stdout
    assert "welcome back" in (out / "episode.txt").read_text().lower()
    assert "kitchen sink" in (out / "stdin.txt").read_text().lower()
    ranged = files.requests_for("/shows/episode.mp3")[-1]
    assert ranged.headers["range"] == "bytes=20000-", "the dropped download resumed"


def test_a_feed_transcribes_its_newest_episode_and_skips_it_next_time(
    files: Files, tmp_path: Path
) -> None:
    files.resources["/media/7.mp3"] = Resource(clip(tmp_path / "7.mp3", seconds=12))
    files.resources["/media/6.mp3"] = Resource(clip(tmp_path / "6.mp3", start=30, seconds=8))
    files.resources["/feed.rss"] = Resource(
        rss(
            [
                {"title": "Ep. 7: Welcome back?", "guid": "ep7", "url": files.url("/media/7.mp3")},
                {"title": "Ep. 6", "guid": "ep6", "url": files.url("/media/6.mp3")},
            ]
        ),
        content_type="application/rss+xml",
    )
    home, out = tmp_path / "home", tmp_path / "out"
    args = ("transcribe", files.url("/feed.rss"), "--latest", "1", "-m", "tiny.en")
    first = cli(*args, "--workers", "1", "--out", str(out), "--format", "txt", home=home)

    assert first.returncode == 0, first.stdout + first.stderr
    assert "feed A Little Show: 1 newest episode(s) of 2" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Ep. 7 Welcome back.txt"]
    assert "welcome back" in (out / "Ep. 7 Welcome back.txt").read_text().lower()
    fetched = len(files.requests_for("/media/7.mp3"))

    again = cli(*args, "--workers", "1", "--out", str(out), home=home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already transcribed (skipped)" in again.stdout
    assert "nothing new to transcribe" in again.stdout
    assert len(files.requests_for("/media/7.mp3")) == fetched
    assert not files.requests_for("/media/6.mp3")


def test_a_feed_episode_the_ledger_knows_by_content_is_named_from_its_title(
    files: Files, tmp_path: Path
) -> None:
    """Its content was transcribed before as a local file: the stored results are reused,
    and the outputs still take the episode's title."""
    audio = clip(tmp_path / "local copy.mp3", seconds=8)
    files.resources["/media/1.mp3"] = Resource(audio)
    files.resources["/feed.rss"] = Resource(
        rss([{"title": "Ep. 1: Hello", "guid": "ep1", "url": files.url("/media/1.mp3")}]),
        content_type="application/rss+xml",
    )
    home = tmp_path / "home"
    common = ("-m", "tiny.en", "--workers", "1", "--format", "txt")
    local = cli(
        "transcribe",
        str(tmp_path / "local copy.mp3"),
        *common,
        "-o",
        str(tmp_path / "a"),
        home=home,
    )
    assert local.returncode == 0, local.stdout + local.stderr
    out = tmp_path / "feed-out"
    feed = cli("transcribe", files.url("/feed.rss"), *common, "--out", str(out), home=home)

    assert feed.returncode == 0, feed.stdout + feed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Ep. 1 Hello.txt"]
    assert "welcome back" in (out / "Ep. 1 Hello.txt").read_text().lower()
    assert "stored results reused" in feed.stdout


@pytest.mark.parametrize(
    ("path", "resource", "says"),
    [
        ("/gone.mp3", None, "404 Not Found: there is no file at that URL"),
        (
            "/feed.xml",
            Resource(b"<<<not xml", content_type="application/rss+xml"),
            "is not a podcast feed",
        ),
    ],
)
def test_bad_urls_fail_in_one_line_and_leave_the_ledger_intact(
    files: Files, tmp_path: Path, path: str, resource: Resource | None, says: str
) -> None:
    if resource is not None:
        files.resources[path] = resource
    home = tmp_path / "home"
    result = cli("transcribe", files.url(path), "-m", "tiny.en", home=home)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    if (home / "ledger.db").exists():
        with sqlite3.connect(home / "ledger.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT COUNT(*) FROM episodes").fetchone() == (0,)
