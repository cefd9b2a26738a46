"""Disk space whisperfarm can give back, and giving it back.

Chunk audio (``<home>/episodes/<id>/chunks/``, about 1.9 MB per audio minute as WAV) is
only needed until every chunk of an episode has its result: a run deletes an episode's
once the episode is done (``drop_chunk_audio``), and the results stay in the ledger, so a
rerun with the same options reuses them without any audio. A rerun that needs chunks
transcribed again cuts the file again (``ingest.register``). ``whisperfarm clean`` finds
what is left over (``reclaimable``) and deletes it (``reclaim``):

- the chunk audio of episodes that are done (from runs before this rule),
- folders under ``episodes/`` that no episode in the ledger owns (removed or lost ones),
- with ``downloads=True``, the download cache (URLs, feed episodes, standard input);
  a download is fetched again when it is asked for again.

Unfinished episodes keep their audio: their runs resume from it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from whisperfarm.ledger import Ledger
from whisperfarm.states import EpisodeState


@dataclass(frozen=True)
class Reclaimable:
    path: Path
    size: int
    """Bytes the files under ``path`` take."""
    why: str


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drop_chunk_audio(episodes_dir: Path, episode_id: str) -> None:
    """Delete a done episode's chunk audio; its results stay in the ledger. Never fails:
    a file left behind is for ``whisperfarm clean``."""
    shutil.rmtree(episodes_dir / episode_id / "chunks", ignore_errors=True)


def reclaimable(
    ledger: Ledger, episodes_dir: Path, downloads_dir: Path, *, downloads: bool = False
) -> list[Reclaimable]:
    """What ``reclaim`` would delete, largest first."""
    found: list[Reclaimable] = []
    states = {episode["id"]: episode for episode in ledger.episodes()}
    if episodes_dir.is_dir():
        for folder in sorted(episodes_dir.iterdir()):
            episode = states.get(folder.name)
            if episode is None:
                found.append(Reclaimable(folder, size_of(folder), "no episode in the ledger"))
            elif episode["state"] == EpisodeState.DONE and (folder / "chunks").exists():
                chunks = folder / "chunks"
                found.append(
                    Reclaimable(chunks, size_of(chunks), f"chunk audio of {episode['name']} (done)")
                )
    if downloads and downloads_dir.is_dir():
        for entry in sorted(downloads_dir.iterdir()):
            found.append(Reclaimable(entry, size_of(entry), "downloaded"))
    return sorted(found, key=lambda item: -item.size)


def reclaim(items: list[Reclaimable]) -> int:
    """Delete ``items``; returns the bytes freed."""
    freed = 0
    for item in items:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        if not item.path.exists():
            freed += item.size
    return freed
