"""A real HTTP server (http.server, in a thread) serving audio and feeds to the download
tests, as unkind as podcast hosts get: it can drop the connection part way through a
file, ignore Range requests, answer 404, 403 or 503, and change a file under its URL."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from tests.support.paths import SAMPLE


@dataclass
class Resource:
    body: bytes
    content_type: str = "audio/mpeg"
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 30 Nov 2026 12:00:00 GMT"
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    ranges: bool = True  # honours Range (and If-Range)
    drops: int = 0  # the next this many answers close the connection part way
    drop_after: int = 0  # … after this many bytes of the body
    fail_first: int = 0  # the next this many answers are 503


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    sent: int  # body bytes written


class Files:
    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[Request] = []
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        files = self.server.files
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.path, headers, 0)
        files.requests.append(request)
        resource = files.resources.get(path)
        if resource is None:
            return self._empty(404)
        if resource.fail_first:
            resource.fail_first -= 1
            return self._empty(503)
        if resource.status != 200:
            return self._empty(resource.status)
        validators = {resource.etag, resource.last_modified} - {None}
        if headers.get("if-none-match") and headers["if-none-match"] == resource.etag:
            return self._empty(304)
        body, start = resource.body, 0
        wanted = headers.get("range", "")
        if_range = headers.get("if-range")
        if (
            resource.ranges
            and wanted.startswith("bytes=")
            and (not if_range or if_range in validators)
        ):
            start = int(wanted[len("bytes=") :].split("-")[0])
            if start >= len(body):  # as servers do (RFC 9110 15.5.17)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", resource.content_type)
        self.send_header("Content-Length", str(len(payload)))
        if resource.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if resource.etag:
            self.send_header("ETag", resource.etag)
        if resource.last_modified:
            self.send_header("Last-Modified", resource.last_modified)
        for name, value in resource.headers.items():
            self.send_header(name, value)
        if resource.drops:
            resource.drops -= 1
            self.send_header("Connection", "close")
            self.end_headers()
            part = payload[: resource.drop_after]
            self.wfile.write(part)
            self.wfile.flush()
            request.sent = len(part)
            self.close_connection = True
            return
        self.end_headers()
        self.wfile.write(payload)
        request.sent = len(payload)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: Files


@contextmanager
def serving() -> Iterator[Files]:
    files = Files()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files = files
    files.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def rss(items: list[dict[str, str]], title: str = "A Little Show") -> bytes:
    """An RSS 2.0 podcast feed; each item's keys: title, guid, url, date (RFC 822)."""
    entries = "".join(
        "<item>"
        f"<title>{escape(item['title'])}</title>"
        + (f"<guid>{item['guid']}</guid>" if item.get("guid") else "")
        + (f"<pubDate>{item['date']}</pubDate>" if item.get("date") else "")
        + f'<enclosure url="{item["url"]}" length="1" type="audio/mpeg"/>'
        "</item>"
        for item in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0"><channel>'
        f"<title>{title}</title><link>http://example.com/</link>"
        f"<description>test</description>{entries}</channel></rss>"
    ).encode()


def clip(target: Path, *, start: float = 0.0, seconds: float = 12.0) -> bytes:
    """A piece of the sample episode (mp3, re-encoded so each clip's bytes differ by its
    start), written to ``target``; returns its bytes."""
    from whisperfarm.media import ffmpeg_exe

    subprocess.run(
        [
            *(ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-ss", str(start), "-t", str(seconds), "-i", str(SAMPLE)),
            *("-ac", "1", "-b:a", "64k", str(target)),
        ],
        check=True,
        timeout=120,
    )
    return target.read_bytes()
