"""Resolving transcribe's arguments (whisperfarm/sources.py) against a real local HTTP
server: audio told apart from feeds, a feed's newest episodes named from their titles,
episodes already transcribed skipped without a download, and the one-line failures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from tenacity import wait_none

from tests.support.httpfiles import Files, Resource, clip, rss
from whisperfarm.decoding import options_key
from whisperfarm.download import Downloader
from whisperfarm.errors import InputError, UsageError
from whisperfarm.ledger import Ledger
from whisperfarm.media import content_hash
from whisperfarm.sources import Resolved, needs_downloader, read_stdin, resolve_inputs

MODEL = "tiny.en"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("clips")
    return [clip(folder / f"{n}.mp3", start=20.0 * n, seconds=6) for n in range(3)]


def resolve(
    files: Files,
    client: httpx.Client,
    home: Path,
    *inputs: str,
    latest: int = 1,
    options: dict[str, Any] | None = None,
) -> Resolved:
    """The inputs resolved; the first one rejected raised, as the one-line error a run of
    that input alone ends with."""
    resolved = resolve_all(files, client, home, *inputs, latest=latest, options=options)
    if resolved.rejected:
        raise InputError(resolved.rejected[0])
    return resolved


def resolve_all(
    files: Files,
    client: httpx.Client,
    home: Path,
    *inputs: str,
    latest: int = 1,
    options: dict[str, Any] | None = None,
) -> Resolved:
    return resolve_inputs(
        list(inputs),
        Downloader(client, home / "downloads", attempts=2, wait=wait_none()),
        ledger_path=home / "ledger.db",
        model=MODEL,
        options_key=options_key(options or {}),
        latest=latest,
    )


def serve_feed(files: Files, clips: list[bytes]) -> None:
    items = []
    for n, body in enumerate(clips):
        files.resources[f"/media/{n}.mp3"] = Resource(body, etag=f'"{n}"')
        items.append(
            {
                "title": ["Bread: a story", "Bread/a story", "The dog & the shoes"][n],
                "guid": f"tag:show,{n}",
                "url": f"/media/{n}.mp3",  # relative: resolved against the feed's URL
                "date": f"Mon, 0{n + 1} Jun 2026 10:00:00 GMT",
            }
        )
    files.resources["/feed"] = Resource(rss(items), content_type="application/octet-stream")


def test_paths_pass_through_and_urls_download(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    files.resources["/ep.mp3"] = Resource(clips[0], content_type="application/octet-stream")
    resolved = resolve(files, client, home, "local.mp3", files.url("/ep.mp3"))
    assert resolved.paths[0] == Path("local.mp3")
    assert resolved.paths[1].name == "ep.mp3"
    assert resolved.paths[1].read_bytes() == clips[0]


def test_a_feed_gives_its_newest_episodes_named_from_their_titles(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    serve_feed(files, clips)
    resolved = resolve(files, client, home, files.url("/feed"), latest=2)

    # Newest first by date: items 2 and 1. Titles sanitised, then made unique.
    assert [p.name for p in resolved.paths] == ["The dog & the shoes.mp3", "Bread a story.mp3"]
    assert [p.read_bytes() for p in resolved.paths] == [clips[2], clips[1]]
    assert resolved.notes == ["feed A Little Show: 2 newest episode(s) of 3"]
    assert not files.requests_for("/media/0.mp3")


def test_titles_that_sanitise_alike_stay_unique(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    serve_feed(files, clips)
    resolved = resolve(files, client, home, files.url("/feed"), latest=3)
    assert [p.stem for p in resolved.paths] == [
        "The dog & the shoes",
        "Bread a story",
        "Bread a story (2)",
    ]


def test_episodes_already_transcribed_are_skipped_without_a_download(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    serve_feed(files, clips)
    first = resolve(files, client, home, files.url("/feed"), latest=2)
    ledger = Ledger(home / "ledger.db")
    done = first.paths[0]  # as if the run had transcribed the newest one
    ledger.create_episode(
        episode_id="e1",
        name=done.stem,
        source=str(done),
        content_hash=content_hash(done),
        model=MODEL,
        options={},
    )
    ledger.update_episode("e1", state="done")
    ledger.close()
    asked = len(files.requests_for("/media/2.mp3"))

    again = resolve(files, client, home, files.url("/feed"), latest=2)
    assert [p.name for p in again.paths] == ["Bread a story.mp3"]
    assert again.notes == [
        "feed A Little Show: 2 newest episode(s) of 3, 1 already transcribed (skipped)"
    ]
    assert len(files.requests_for("/media/2.mp3")) == asked, "a skipped episode is not fetched"


def test_an_episode_done_with_another_model_is_not_skipped(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    serve_feed(files, clips)
    path = resolve(files, client, home, files.url("/feed")).paths[0]
    ledger = Ledger(home / "ledger.db")
    ledger.create_episode(
        episode_id="e1",
        name="x",
        source=str(path),
        content_hash=content_hash(path),
        model="small.en",
        options={},
    )
    ledger.update_episode("e1", state="done")
    ledger.close()
    assert [p.name for p in resolve(files, client, home, files.url("/feed")).paths] == [
        "The dog & the shoes.mp3"
    ]


def test_an_episode_done_with_other_decoding_options_is_not_skipped(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    """Options are part of what a result is (whisperfarm/decoding.py): `--words` after a
    plain run transcribes the feed's episode again, as it would a file."""
    serve_feed(files, clips)
    path = resolve(files, client, home, files.url("/feed")).paths[0]
    with Ledger(home / "ledger.db") as ledger:
        ledger.create_episode(
            episode_id="e1",
            name="x",
            source=str(path),
            content_hash=content_hash(path),
            model=MODEL,
            options={},
        )
        ledger.update_episode("e1", state="done")
    assert resolve(files, client, home, files.url("/feed")).paths == []  # same options
    again = resolve(files, client, home, files.url("/feed"), options={"word_timestamps": True})
    assert [p.name for p in again.paths] == ["The dog & the shoes.mp3"]


def test_a_feed_that_is_not_xml_fails_in_one_line(
    files: Files, client: httpx.Client, home: Path
) -> None:
    files.resources["/feed.xml"] = Resource(
        b'{"episodes": ["not", "xml"]}', content_type="application/rss+xml"
    )
    with pytest.raises(InputError) as caught:
        resolve(files, client, home, files.url("/feed.xml"))
    assert "is not a podcast feed: it is not RSS or Atom XML" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_feed_without_audio_enclosures_fails_in_one_line(
    files: Files, client: httpx.Client, home: Path
) -> None:
    body = rss([]).replace(b"</channel>", b"<item><title>text only</title></item></channel>")
    files.resources["/feed.xml"] = Resource(body, content_type="text/xml")
    with pytest.raises(InputError, match="has no episodes with audio"):
        resolve(files, client, home, files.url("/feed.xml"))


def test_a_feed_cannot_make_it_read_local_files(
    files: Files, client: httpx.Client, home: Path
) -> None:
    files.resources["/feed.xml"] = Resource(
        rss([{"title": "secret", "guid": "1", "url": "file:///etc/passwd"}]),
        content_type="text/xml",
    )
    with pytest.raises(InputError, match="has no episodes with audio"):
        resolve(files, client, home, files.url("/feed.xml"))


def test_a_web_page_is_neither_audio_nor_a_feed(
    files: Files, client: httpx.Client, home: Path
) -> None:
    files.resources["/show"] = Resource(
        b"<!DOCTYPE html><html><body>Our show</body></html>", content_type="text/html"
    )
    with pytest.raises(InputError, match="is a web page, not audio or a podcast feed"):
        resolve(files, client, home, files.url("/show"))


def test_a_download_that_is_not_audio_names_its_url(
    files: Files, client: httpx.Client, home: Path
) -> None:
    files.resources["/ep.mp3"] = Resource(b"\x00garbage" * 500, content_type="audio/mpeg")
    with pytest.raises(InputError) as caught:
        resolve(files, client, home, files.url("/ep.mp3"))
    message = str(caught.value)
    assert message.startswith(f"{files.url('/ep.mp3')} (downloaded as ")
    assert ") is not audio ffmpeg can read" in message  # not "): is not audio"


def test_standard_input_is_read_into_the_cache(home: Path, clips: list[bytes]) -> None:
    path = read_stdin(io.BytesIO(clips[0]), home / "downloads")
    assert path.name == "stdin" and path.read_bytes() == clips[0]
    assert path.is_relative_to(home / "downloads")


def test_empty_or_missing_standard_input_fails_in_one_line(home: Path) -> None:
    with pytest.raises(InputError, match="standard input was empty"):
        read_stdin(io.BytesIO(b""), home / "downloads")
    with pytest.raises(UsageError, match="nothing is piped in"):
        read_stdin(None, home / "downloads")
    with pytest.raises(InputError, match=r"^standard input is not audio"):
        read_stdin(io.BytesIO(b"hello" * 100), home / "downloads")


def test_a_bad_url_does_not_stop_the_batch(
    files: Files, client: httpx.Client, home: Path, clips: list[bytes]
) -> None:
    """As with a bad file: the good inputs are resolved, each bad one is one line."""
    files.resources["/ep.mp3"] = Resource(clips[0], content_type="audio/mpeg")
    resolved = resolve_all(files, client, home, files.url("/gone.mp3"), files.url("/ep.mp3"))
    assert [path.name for path in resolved.paths] == ["ep.mp3"]
    (line,) = resolved.rejected
    assert "/gone.mp3" in line and "404" in line


def test_a_url_of_another_scheme_is_refused_by_its_name(
    files: Files, client: httpx.Client, home: Path
) -> None:
    """ftp://host/ep.mp3 is not a file called 'ftp:/host/ep.mp3' that doesn't exist."""
    with pytest.raises(InputError, match=r"^ftp://127.0.0.1/ep.mp3: ftp:// is not supported"):
        resolve(files, client, home, "ftp://127.0.0.1/ep.mp3")


@pytest.mark.parametrize(
    ("inputs", "needs"),
    [
        (["ep.mp3", "show/ep 2.m4a"], False),
        (["ep.mp3", "-"], True),
        (["https://example.org/ep.mp3"], True),
        (["HTTP://example.org/feed"], True),
        (["ftp://example.org/ep.mp3"], True),  # refused by resolve_inputs, with its line
    ],
)
def test_only_urls_and_standard_input_need_a_downloader(inputs: list[str], needs: bool) -> None:
    assert needs_downloader(inputs) is needs


def test_files_alone_resolve_without_a_downloader(home: Path) -> None:
    resolved = resolve_inputs(
        ["a.mp3", "b/c.wav"], None, ledger_path=home / "ledger.db", model=MODEL, options_key=""
    )
    assert resolved == Resolved(paths=[Path("a.mp3"), Path("b/c.wav")])
    with pytest.raises(ValueError, match="need a Downloader"):
        resolve_inputs(["-"], None, ledger_path=home / "ledger.db", model=MODEL, options_key="")
