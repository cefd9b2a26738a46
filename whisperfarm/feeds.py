"""Podcast feeds: RSS or Atom, parsed with feedparser, and the ledger's record of which
of their episodes were downloaded as what.

An episode of a feed is keyed by its GUID (``<guid>`` in RSS, ``<id>`` in Atom), else by
its enclosure URL. ``FeedEpisodes`` records, per feed and key, the content hash of the file
downloaded for it, so a later run knows an episode is done (the ledger holds a ``done``
episode with that content and model) without downloading it again.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser

from whisperfarm.download import is_url
from whisperfarm.errors import InputError
from whisperfarm.ledger import Ledger
from whisperfarm.states import EpisodeState

MEDIA_SUFFIXES = frozenset(
    {".mp3", ".m4a", ".mp4", ".aac", ".ogg", ".oga", ".opus", ".wav", ".flac", ".webm", ".mov"}
)


@dataclass(frozen=True)
class FeedEpisode:
    key: str  # GUID, else the enclosure URL
    title: str
    url: str  # the enclosure
    published: float | None  # seconds since the epoch, when the feed says


@dataclass(frozen=True)
class Feed:
    url: str
    title: str
    episodes: list[FeedEpisode]  # newest first

    def latest(self, count: int) -> list[FeedEpisode]:
        return self.episodes[:count]


def parse_feed(url: str, body: bytes) -> Feed:
    """The feed's episodes with an audio or video enclosure, newest first (by date when
    every one has a date, else in the feed's order). InputError if ``body`` is no RSS or
    Atom feed, or has no such episode."""
    # Bytes, never a string: given a string, feedparser would treat it as a URL to fetch.
    parsed = feedparser.parse(body, response_headers={"content-location": url})
    if not parsed.get("version"):
        reason = parsed.get("bozo_exception")
        detail = f" ({str(reason).strip().splitlines()[0]})" if reason else ""
        raise InputError(
            f"{url} is not a podcast feed: it is not RSS or Atom XML{detail}; "
            "give the feed's URL, or an audio file's"
        )
    episodes = []
    for entry in parsed.entries:
        enclosure = _enclosure(url, entry)
        if enclosure is None:
            continue
        title = str(entry.get("title") or "").strip()
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        episodes.append(
            FeedEpisode(
                key=str(entry.get("id") or enclosure),
                title=title or PurePosixPath(urlsplit(enclosure).path).stem,
                url=enclosure,
                published=calendar.timegm(stamp) if stamp else None,
            )
        )
    if not episodes:
        raise InputError(
            f"{url} has no episodes with audio (no audio or video enclosures): "
            "give a podcast's feed, or an audio file's URL"
        )
    if all(e.published is not None for e in episodes):
        episodes.sort(key=lambda e: e.published or 0.0, reverse=True)
    title = str(parsed.feed.get("title") or url).strip()
    return Feed(url, title, episodes)


def _enclosure(feed_url: str, entry: Any) -> str | None:
    """The entry's first audio or video enclosure, as an absolute http(s) URL: a feed
    names what is downloaded, so never a file:// or other scheme."""
    for link in entry.get("enclosures") or []:
        href = urljoin(feed_url, str(link.get("href") or ""))
        kind = str(link.get("type") or "").lower()
        suffix = PurePosixPath(urlsplit(href).path).suffix.lower()
        if is_url(href) and (kind.startswith(("audio/", "video/")) or suffix in MEDIA_SUFFIXES):
            return href
    return None


def unique_stems(titles: list[str], taken: set[str]) -> list[str]:
    """Titles made unique among themselves and ``taken``: "Intro", "Intro (2)", …"""
    stems = []
    seen = {t.casefold() for t in taken}
    for title in titles:
        stem, n = title, 1
        while stem.casefold() in seen:
            n += 1
            stem = f"{title} ({n})"
        seen.add(stem.casefold())
        stems.append(stem)
    return stems


class FeedEpisodes:
    """The ledger's ``feed_episodes`` table (migration m008): what each feed episode was
    downloaded as."""

    def __init__(self, ledger: Ledger):
        self.db = ledger.db

    def done(self, feed_url: str, model: str, options_key: str) -> set[str]:
        """Keys of the feed's episodes the ledger holds transcribed with ``model`` and the
        decoding options of ``options_key`` (whisperfarm/decoding.py): with other options
        an episode is transcribed again, as a file would be."""
        rows = self.db.execute(
            "SELECT f.key FROM feed_episodes f JOIN episodes e"
            " ON e.content_hash = f.content_hash AND e.model = ? AND e.options_key = ?"
            f" AND e.state = '{EpisodeState.DONE}'"
            " WHERE f.feed_url = ?",
            (model, options_key, feed_url),
        ).fetchall()
        return {row[0] for row in rows}

    def record(self, feed_url: str, episode: FeedEpisode, content_hash: str, path: Path) -> None:
        now = time.time()
        self.db.execute(
            "INSERT OR REPLACE INTO feed_episodes"
            " (feed_url, key, title, enclosure_url, content_hash, file, downloaded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (feed_url, episode.key, episode.title, episode.url, content_hash, str(path), now),
        )
