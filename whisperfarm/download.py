"""Downloading an input from an http(s) URL into the home's download cache.

    Downloader(client, cache_dir).fetch(url) -> Download(url, path, content_type)
      ├── a finished copy in the cache is asked for again with its validators (ETag,
      │   Last-Modified): 304 → the copy; 200 → downloaded anew
      ├── streamed into <cache>/<key>/download.part, with a progress bar on a terminal
      ├── a dropped connection, a timeout or a transient answer (408, 429, 5xx) is tried
      │   again (tenacity), resuming with Range where the .part ends; If-Range (the strong
      │   ETag, else Last-Modified) makes a server whose file has changed send it whole,
      │   and the .part starts over. A .part left by an earlier run is resumed only with a
      │   validator, so a changed file is never spliced onto an old beginning
      └── named from Content-Disposition, else the URL's last path segment (sanitised),
          with the extension its Content-Type implies when the name has none

Cache layout: ``<cache>/<sha256(url)[:16]>/`` holds ``<name>`` once complete,
``download.part`` while not, and ``download.json`` (name, validators, content type).

Failures a user can act on (404, 403, no network, a server that keeps dropping the
connection and can't resume) raise InputError with one line naming the URL and the fix.
"""

from __future__ import annotations

import email.message
import hashlib
import json
import mimetypes
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from whisperfarm import __version__
from whisperfarm.errors import InputError

PART = "download.part"
META = "download.json"
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Content types whose extension mimetypes gets wrong or doesn't know.
EXTENSIONS = {
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "application/rss+xml": ".xml",
    "application/atom+xml": ".xml",
    "application/xml": ".xml",
    "text/xml": ".xml",
}
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
WaitStrategy = Callable[[RetryCallState], float]


@dataclass(frozen=True)
class Download:
    url: str
    path: Path
    content_type: str  # the media type alone, lower case; "" when the server sent none


class Progress(Protocol):
    """Where a download reports its bytes; ``start`` again after a retry."""

    def start(self, name: str, total: int | None, done: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, name: str, total: int | None, done: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def stop(self) -> None:
        pass


class BarProgress:
    """A rich progress bar, for a terminal."""

    def __init__(self, console: Any):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def start(self, name: str, total: int | None, done: int) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(f"downloading {name}", total=total, completed=done)
        else:
            self._bar.update(self._task, total=total, completed=done)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, count)

    def stop(self) -> None:
        if self._task is not None:
            self._bar.stop()
            self._bar.remove_task(self._task)
            self._task = None


def http_client() -> httpx.Client:
    """The client downloads use: redirects followed (podcast hosts send enclosures through
    trackers), timeouts on, a User-Agent some hosts insist on."""
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(30.0, connect=10.0),
        headers={"User-Agent": f"whisperfarm/{__version__}"},
    )


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def safe_name(text: str, fallback: str = "download") -> str:
    """``text`` as one file name: no separators or characters Windows refuses, no control
    characters, no leading dot, at most 120 characters."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" .")[:120].strip(" .")
    # "ep?.wav" → "ep .wav" → "ep.wav": the stem names the transcripts ("ep.txt")
    text = re.sub(r"[ .]+(\.[A-Za-z0-9]{1,5})$", r"\1", text)
    return text or fallback


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class _Transient(Exception):
    """One attempt failed in a way the next may not."""


class _Dropped(_Transient):
    """The connection closed before the whole file came."""


class Downloader:
    def __init__(
        self,
        client: httpx.Client,
        cache_dir: Path,
        *,
        progress: Progress | None = None,
        attempts: int = 5,
        wait: WaitStrategy | None = None,
    ):
        self.client = client
        self.cache_dir = cache_dir
        self.progress = progress or NoProgress()
        self.attempts = attempts
        self.wait: WaitStrategy = wait or wait_exponential(multiplier=0.5, max=8)

    def fetch(self, url: str, *, stem: str | None = None) -> Download:
        """``url``'s file in the cache, downloaded or resumed as needed; named ``stem`` plus
        its extension when given (a feed episode's title), else from the headers or URL."""
        folder = self.cache_dir / url_key(url)
        folder.mkdir(parents=True, exist_ok=True)
        attempt = _Attempt(self, url, folder, stem)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self.wait,
            retry=retry_if_exception_type((httpx.TransportError, _Transient)),
            reraise=True,
        )
        try:
            return retrying(attempt.run)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise InputError(
                f"{url}: can't reach {urlsplit(url).hostname} ({_reason(error)}): "
                "check the network connection and the URL"
            ) from error
        except httpx.TimeoutException as error:
            raise InputError(
                f"{url}: the server stopped answering ({self.attempts} tries timed out): "
                "try again later"
            ) from error
        except (httpx.TransportError, _Dropped) as error:
            raise InputError(attempt.dropped_message(self.attempts)) from error
        except _Transient as error:
            raise InputError(
                f"{url}: the server answered {error} {self.attempts} times: try again later"
            ) from error
        finally:
            self.progress.stop()


class _Attempt:
    """One URL's download, tried as often as the Downloader allows."""

    def __init__(self, downloader: Downloader, url: str, folder: Path, stem: str | None):
        self.downloader = downloader
        self.url = url
        self.folder = folder
        self.stem = stem
        self.part = folder / PART
        self.resumable_now = False  # a .part this process wrote may resume without a validator
        self.range_ignored = False
        self.received = 0
        self.total: int | None = None

    def dropped_message(self, attempts: int) -> str:
        size = self.part.stat().st_size if self.part.exists() else 0
        got = f"{_mb(size)} of {_mb(self.total) if self.total else '?'} MB"
        if self.range_ignored:
            return (
                f"{self.url}: the server dropped the connection {attempts} times and can't "
                f"resume (it ignores range requests), so every try starts over ({got} on the "
                "last): try again later, or download it another way and give the file's path"
            )
        return (
            f"{self.url}: the server kept dropping the connection ({attempts} tries, {got} "
            "downloaded and kept): run the same command again to resume"
        )

    def run(self) -> Download:
        meta = _read_meta(self.folder)
        validator = meta.get("etag") if _strong(meta.get("etag")) else meta.get("last_modified")
        finished = meta.get("complete") and (self.folder / str(meta.get("name"))).is_file()
        headers = {"Accept-Encoding": "identity"}  # ranges count the bytes as stored
        offset = self.part.stat().st_size if self.part.exists() else 0
        if finished:
            offset = 0
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]
        elif offset and (validator or self.resumable_now):
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        else:
            offset = 0
        with self.downloader.client.stream("GET", self.url, headers=headers) as response:
            status = response.status_code
            if finished and status == 304:
                return self._reuse(meta)
            if status in TRANSIENT_STATUS:
                raise _Transient(f"{status} {response.reason_phrase}")
            if status == 416 and offset:
                # "bytes */<offset>": the .part is the whole file (stopped before its rename)
                whole = _content_range(response.headers.get("content-range")) == (-1, offset)
                if whole and validator:
                    return self._finish(str(meta["name"]), str(meta.get("content_type") or ""))
                self.part.unlink()  # the .part is no prefix of the file: start over
                raise _Transient("416 Range Not Satisfiable")
            if status >= 400:
                raise InputError(_refusal(self.url, response))
            content_type = _media_type(response.headers.get("content-type"))
            name, served = self._names(response, content_type)
            if status == 206:
                start, self.total = _content_range(response.headers.get("content-range"))
                if start != offset:
                    self.part.unlink(missing_ok=True)
                    raise _Transient("206 for another range")
                mode = "ab"
            else:
                if "Range" in headers:
                    self.range_ignored = "If-Range" not in headers or bool(
                        response.headers.get("etag") == meta.get("etag")
                        and response.headers.get("last-modified") == meta.get("last_modified")
                    )
                offset, mode = 0, "wb"
                length = response.headers.get("content-length")
                self.total = int(length) if length and length.isdigit() else None
            _write_meta(
                self.folder,
                {
                    "url": self.url,
                    "name": name,
                    "served": served,
                    "etag": response.headers.get("etag"),
                    "last_modified": response.headers.get("last-modified"),
                    "content_type": content_type,
                    "complete": False,
                },
            )
            progress = self.downloader.progress
            progress.start(name, self.total, offset)
            self.resumable_now = True
            with self.part.open(mode) as handle:
                for data in response.iter_raw():
                    handle.write(data)
                    progress.advance(len(data))
            if self.total is not None and self.part.stat().st_size < self.total:
                raise _Dropped("the connection closed before the whole file came")
        return self._finish(name, content_type)

    def _finish(self, name: str, content_type: str) -> Download:
        final = self.folder / name
        for stale in self.folder.iterdir():  # an earlier copy under another name
            if stale.name not in (PART, META):
                stale.unlink()
        os.replace(self.part, final)
        _write_meta(self.folder, {**_read_meta(self.folder), "complete": True})
        return Download(self.url, final, content_type)

    def _reuse(self, meta: dict[str, Any]) -> Download:
        path = self.folder / str(meta["name"])
        content_type = str(meta.get("content_type") or "")
        # the server's name from the first download (a cache from before "served" was
        # kept: the file's name), never the name a feed's title gave the file since
        served = str(meta.get("served") or meta["name"])
        wanted, served = self._names(None, content_type, served=served)
        if wanted != path.name:
            path = path.rename(self.folder / wanted)
        if (wanted, served) != (meta["name"], meta.get("served")):
            _write_meta(self.folder, {**meta, "name": wanted, "served": served})
        return Download(self.url, path, content_type)

    def _names(
        self, response: httpx.Response | None, content_type: str, *, served: str = ""
    ) -> tuple[str, str]:
        """(the file's name, the name the server gives it): from Content-Disposition (or,
        without a response, ``served``, as the first download found it), else the URL's
        last segment, with an extension from the content type where it has none; the
        file's name is the feed episode's title (``stem``) where there is one."""
        from_url = unquote(PurePosixPath(urlsplit(self.url).path).name)
        given = _disposition_name(response.headers.get("content-disposition")) if response else ""
        name = safe_name(given or served or from_url)
        suffix = PurePosixPath(name).suffix
        if not _EXTENSION.match(suffix) or suffix[1:].isdigit():
            suffix = _extension(content_type)
            name = f"{name}{suffix}"
        if self.stem is None:
            return name, name
        url_suffix = PurePosixPath(from_url).suffix
        if _EXTENSION.match(url_suffix) and not url_suffix[1:].isdigit():
            suffix = url_suffix
        return f"{safe_name(self.stem, 'episode')}{suffix}", name


def _refusal(url: str, response: httpx.Response) -> str:
    status = f"{response.status_code} {response.reason_phrase}".strip()
    if response.status_code in (404, 410):
        return f"{url}: {status}: there is no file at that URL; check it"
    if response.status_code in (401, 403):
        return (
            f"{url}: {status}: the server refused the download; the link may have expired or "
            "need a login: get a fresh link, or download it yourself and give the file's path"
        )
    return f"{url}: the server answered {status}: check the URL"


def _disposition_name(value: str | None) -> str:
    if not value:
        return ""
    message = email.message.Message()
    message["content-disposition"] = value
    name = message.get_filename()  # RFC 2231 filename* too
    return PurePosixPath(name.replace("\\", "/")).name if name else ""


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _extension(content_type: str) -> str:
    return EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type or "") or ""


def _content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes 100-199/1000`` → (100, 1000); ``bytes */1000`` (a 416's) → (-1, 1000)."""
    unsatisfied = re.match(r"bytes \*/(\d+)", value or "")
    if unsatisfied:
        return -1, int(unsatisfied.group(1))
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    if not match:
        return -1, None
    total = match.group(2)
    return int(match.group(1)), int(total) if total.isdigit() else None


def _strong(etag: str | None) -> bool:
    """If-Range takes only a strong ETag (RFC 9110 13.1.5)."""
    return bool(etag) and not str(etag).startswith("W/")


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    temporary = folder / f"{META}.tmp"
    temporary.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(temporary, folder / META)


def _mb(size: int | None) -> str:
    return f"{(size or 0) / 1_000_000:.1f}"


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
