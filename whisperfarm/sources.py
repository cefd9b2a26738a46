"""What each input argument of ``transcribe`` names, resolved to local files before a run.

    resolve_inputs(["ep.mp3", "https://…/ep.mp3", "https://…/feed.xml", "-"], …)
      ├── a path: itself (media.check_input judges it later, as for any file)
      ├── "-": standard input, copied into the download cache as ``stdin``
      └── an http(s) URL: downloaded into the cache (download.py), then told apart by what
          came back, Content-Type first and the first bytes where that says too little:
            audio/* or video/*                           → an episode
            an RSS/Atom/XML type, or first bytes "<?xml",
              "<rss", "<feed" or "<rdf:RDF"              → a feed (feeds.py): its newest
              ``latest`` episodes, minus those the ledger has transcribed with this model,
              each downloaded and named from its title
            text/html, or first bytes "<!doctype html"
              or "<html"                                 → a web page: one line saying so
            anything else (octet-stream, none, …)        → an episode, if ffmpeg can read it

Downloads are checked as audio here, so a page that is not audio names its URL.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from whisperfarm.errors import InputError, UsageError
from whisperfarm.ledger import Ledger
from whisperfarm.media import check_input, content_hash

if TYPE_CHECKING:
    from whisperfarm.download import Download, Downloader

STDIN = "-"
FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/xml", "text/xml")
FEED_STARTS = (b"<?xml", b"<rss", b"<feed", b"<rdf:rdf")
PAGE_STARTS = (b"<!doctype html", b"<html")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass
class Resolved:
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a feed gave, for the user
    rejected: list[str] = field(default_factory=list)
    """One line for each URL (or standard input) that gave nothing to transcribe: a batch
    goes on without it, as it does without a bad file (plan.readable)."""


def needs_downloader(inputs: list[str]) -> bool:
    """Whether resolving ``inputs`` needs a Downloader: one names standard input or a URL.
    Files alone don't, and then a run imports no HTTP client and opens none."""
    return any(text == STDIN or SCHEME.match(text) for text in inputs)


def resolve_inputs(
    inputs: list[str],
    downloader: Downloader | None,
    *,
    ledger_path: Path,
    model: str,
    options_key: str,
    latest: int = 1,
    stdin: BinaryIO | None = None,
) -> Resolved:
    """The files ``inputs`` name. ``downloader`` may be None where ``needs_downloader``
    says so."""
    if downloader is None:
        if needs_downloader(inputs):
            raise ValueError("these inputs need a Downloader")
        return Resolved(paths=[Path(text) for text in inputs])
    from whisperfarm.download import is_url

    resolved = Resolved()
    for text in inputs:
        try:
            if text == STDIN:
                resolved.paths.append(read_stdin(stdin, downloader.cache_dir))
            elif is_url(text):
                download = downloader.fetch(text)
                if kind_of(download) == "feed":
                    made_with = (model, options_key)
                    _add_feed(resolved, download, downloader, ledger_path, made_with, latest)
                else:
                    resolved.paths.append(_checked(download))
            elif SCHEME.match(text):
                scheme = text.partition("://")[0]
                raise InputError(f"{text}: {scheme}:// is not supported: give an http(s) URL")
            else:
                resolved.paths.append(Path(text))
        except InputError as error:
            resolved.rejected.append(str(error))
    return resolved


def kind_of(download: Download) -> str:
    """ "episode" or "feed" (see the module's docstring); InputError for a web page."""
    content_type = download.content_type
    if content_type.startswith(("audio/", "video/")):
        return "episode"
    with download.path.open("rb") as handle:
        start = handle.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if content_type in FEED_TYPES or "rss" in content_type or start.startswith(FEED_STARTS):
        return "feed"
    if content_type == "text/html" or start.startswith(PAGE_STARTS):
        raise InputError(
            f"{download.url} is a web page, not audio or a podcast feed: give the audio "
            "file's URL, or the podcast's RSS feed URL"
        )
    return "episode"


def _checked(download: Download) -> Path:
    try:
        check_input(download.path)
    except InputError as error:
        label = f"{download.url} (downloaded as {download.path})"
        raise _named(error, download.path, label) from error
    return download.path


def _named(error: InputError, path: Path, label: str) -> InputError:
    """``error`` about ``path`` told of ``label`` instead ("standard input is not audio
    …", not "standard input: is not audio …")."""
    text = str(error)
    return InputError(
        text.replace(str(path), label, 1) if str(path) in text else f"{label}: {text}"
    )


def _add_feed(
    resolved: Resolved,
    download: Download,
    downloader: Downloader,
    ledger_path: Path,
    made_with: tuple[str, str],
    latest: int,
) -> None:
    from whisperfarm.download import safe_name
    from whisperfarm.feeds import FeedEpisodes, parse_feed, unique_stems

    feed = parse_feed(download.url, download.path.read_bytes())
    ledger = Ledger(ledger_path)
    try:
        store = FeedEpisodes(ledger)
        done = store.done(feed.url, *made_with)
        wanted = feed.latest(latest)
        new = [episode for episode in wanted if episode.key not in done]
        taken = {path.stem for path in resolved.paths}
        stems = unique_stems([safe_name(episode.title, "episode") for episode in new], taken)
        for episode, stem in zip(new, stems, strict=True):
            path = _checked(downloader.fetch(episode.url, stem=stem))
            store.record(feed.url, episode, content_hash(path), path)
            resolved.paths.append(path)
    finally:
        ledger.close()
    skipped = len(wanted) - len(new)
    resolved.notes.append(
        f"feed {feed.title}: {len(wanted)} newest episode(s) of {len(feed.episodes)}"
        + (f", {skipped} already transcribed (skipped)" if skipped else "")
    )


def read_stdin(stream: BinaryIO | None, cache_dir: Path) -> Path:
    """Standard input, copied into ``<cache>/stdin/<sha256[:16]>/stdin``."""
    if stream is None or (hasattr(stream, "isatty") and stream.isatty()):
        raise UsageError(
            "'-' reads audio from standard input, but nothing is piped in: "
            "e.g. `cat episode.mp3 | whisperfarm transcribe -`"
        )
    folder = cache_dir / "stdin"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as temporary:
        while data := stream.read(1 << 20):
            digest.update(data)
            temporary.write(data)
    target = folder / digest.hexdigest()[:16] / "stdin"
    if os.path.getsize(temporary.name) == 0:
        os.unlink(temporary.name)
        raise InputError("standard input was empty: pipe an audio file in")
    target.parent.mkdir(exist_ok=True)
    shutil.move(temporary.name, target)
    try:
        check_input(target)
    except InputError as error:
        raise _named(error, target, "standard input") from error
    return target
