"""Downloads over real HTTP (a local http.server, tests/support/httpfiles.py): naming, resuming
after a dropped connection, a changed file starting over, revalidation, and the failures a
user sees in one line."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from tenacity import wait_none

from tests.support.httpfiles import Files, Resource, clip
from whisperfarm.download import PART, Downloader, safe_name, url_key
from whisperfarm.errors import InputError


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return clip(tmp_path_factory.mktemp("clip") / "clip.mp3", seconds=12)


def downloader(client: httpx.Client, cache: Path, attempts: int = 4) -> Downloader:
    return Downloader(client, cache, attempts=attempts, wait=wait_none())


def test_downloads_a_file_named_after_the_url(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/shows/episode%201.mp3"] = Resource(audio)
    url = files.url("/shows/episode%201.mp3")
    download = downloader(client, tmp_path).fetch(url)
    assert download.path == tmp_path / url_key(url) / "episode 1.mp3"
    assert download.path.read_bytes() == audio
    assert download.content_type == "audio/mpeg"
    assert not (download.path.parent / PART).exists()


def test_content_disposition_names_the_file_and_content_type_gives_the_extension(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/get"] = Resource(audio, content_type="audio/x-m4a")
    files.resources["/dl"] = Resource(
        audio, headers={"Content-Disposition": 'attachment; filename="../My Show: Ep 1.mp3"'}
    )
    assert downloader(client, tmp_path).fetch(files.url("/get?id=7")).path.name == "get.m4a"
    assert downloader(client, tmp_path).fetch(files.url("/dl")).path.name == "My Show Ep 1.mp3"


def test_a_url_keeps_its_own_name_after_a_feed_named_its_file(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    """A feed's episode whose enclosure was fetched before as a plain URL renames the
    cached file after the episode's title; the plain URL, asked for again, took the
    title ("Intro (2).txt") instead of its own name."""
    files.resources["/ep1.mp3"] = Resource(audio)
    files.resources["/dl"] = Resource(
        audio, headers={"Content-Disposition": 'attachment; filename="My Show: Ep 1.mp3"'}
    )
    for path, own in (("/ep1.mp3", "ep1.mp3"), ("/dl", "My Show Ep 1.mp3")):
        url = files.url(path)
        assert downloader(client, tmp_path).fetch(url).path.name == own
        titled = downloader(client, tmp_path).fetch(url, stem="Intro (2)")
        assert titled.path.name == "Intro (2).mp3"
        again = downloader(client, tmp_path).fetch(url)
        assert again.path.name == own
        assert again.path.read_bytes() == audio


def test_names_are_sanitised() -> None:
    assert safe_name('a/b\\c:d*e?f"g<h>i|j') == "a b c d e f g h i j"
    assert safe_name("..hidden. ") == "hidden"
    assert safe_name("\x00\x1f") == "download"
    assert len(safe_name("x" * 500)) == 120
    assert safe_name("My Show: ep?.wav") == "My Show ep.wav"  # was "My Show ep .wav"
    assert safe_name("take 2 ..mp3") == "take 2.mp3"
    assert safe_name("v1.2 final") == "v1.2 final"


def test_a_dropped_connection_resumes_where_it_stopped(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio, drops=2, drop_after=len(audio) // 4)
    download = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))

    assert download.path.read_bytes() == audio
    first, second, third = files.requests_for("/ep.mp3")
    assert "range" not in first.headers
    quarter = len(audio) // 4
    assert second.headers["range"] == f"bytes={quarter}-"
    assert second.headers["if-range"] == '"v1"'
    assert third.headers["range"] == f"bytes={2 * quarter}-"
    assert first.sent + second.sent + third.sent == len(audio), "no byte sent twice"


def test_a_server_that_drops_and_cannot_resume_fails_in_one_line(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio, ranges=False, drops=99, drop_after=1000)
    with pytest.raises(InputError) as caught:
        downloader(client, tmp_path, attempts=3).fetch(files.url("/ep.mp3"))
    message = str(caught.value)
    assert "dropped the connection 3 times and can't resume" in message
    assert "\n" not in message
    assert len(files.requests_for("/ep.mp3")) == 3


def test_a_file_that_changed_since_a_partial_download_starts_over(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    old = audio[::-1]
    files.resources["/ep.mp3"] = Resource(old, drops=99, drop_after=5000)
    with pytest.raises(InputError, match="run the same command again to resume"):
        downloader(client, tmp_path, attempts=1).fetch(files.url("/ep.mp3"))
    assert (tmp_path / url_key(files.url("/ep.mp3")) / PART).stat().st_size == 5000

    files.resources["/ep.mp3"] = Resource(audio, etag='"v2"', last_modified=None)
    download = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))

    assert download.path.read_bytes() == audio
    resumed = files.requests_for("/ep.mp3")[-1]
    assert resumed.headers["range"] == "bytes=5000-"
    assert resumed.headers["if-range"] == '"v1"'


def test_a_partial_download_resumes_in_a_later_run(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio, drops=1, drop_after=7000)
    with pytest.raises(InputError):
        downloader(client, tmp_path, attempts=1).fetch(files.url("/ep.mp3"))
    download = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))
    assert download.path.read_bytes() == audio
    assert files.requests_for("/ep.mp3")[-1].sent == len(audio) - 7000


def test_a_whole_part_left_before_its_rename_is_finished_without_a_download(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio, drops=1, drop_after=7000)
    with pytest.raises(InputError):
        downloader(client, tmp_path, attempts=1).fetch(files.url("/ep.mp3"))
    (tmp_path / url_key(files.url("/ep.mp3")) / PART).write_bytes(audio)  # all came, then a crash

    download = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))
    assert download.path.name == "ep.mp3" and download.path.read_bytes() == audio
    assert files.requests_for("/ep.mp3")[-1].headers["range"] == f"bytes={len(audio)}-"
    assert len(files.requests_for("/ep.mp3")) == 2, "no second download"


def test_a_finished_download_is_revalidated_not_fetched_again(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio)
    first = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))
    again = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))
    assert again.path == first.path and again.path.read_bytes() == audio
    last = files.requests_for("/ep.mp3")[-1]
    assert last.headers["if-none-match"] == '"v1"' and last.sent == 0

    files.resources["/ep.mp3"] = Resource(audio[:-100], etag='"v2"')
    changed = downloader(client, tmp_path).fetch(files.url("/ep.mp3"))
    assert changed.path.read_bytes() == audio[:-100]


def test_transient_answers_are_retried(
    files: Files, client: httpx.Client, tmp_path: Path, audio: bytes
) -> None:
    files.resources["/ep.mp3"] = Resource(audio, fail_first=2)
    assert downloader(client, tmp_path).fetch(files.url("/ep.mp3")).path.read_bytes() == audio
    assert len(files.requests_for("/ep.mp3")) == 3


@pytest.mark.parametrize(
    ("status", "says"),
    [(404, "404 Not Found: there is no file at that URL"), (403, "403 Forbidden: the server")],
)
def test_refusals_fail_at_once_in_one_line(
    files: Files, client: httpx.Client, tmp_path: Path, status: int, says: str
) -> None:
    files.resources["/gone.mp3"] = Resource(b"", status=status)
    with pytest.raises(InputError) as caught:
        downloader(client, tmp_path).fetch(files.url("/gone.mp3"))
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert len(files.requests_for("/gone.mp3")) == 1, "a refusal is not retried"


def test_no_network_says_so(client: httpx.Client, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match=r"can't reach 127\.0\.0\.1 .*check the network"):
        downloader(client, tmp_path, attempts=2).fetch(f"http://127.0.0.1:{port}/ep.mp3")
