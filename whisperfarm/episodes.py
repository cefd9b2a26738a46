"""The episodes a ledger holds: list them, export their transcripts again from the stored
chunk results (no re-transcribing), re-queue their failed chunks, and remove them with
their audio chunks and results.

An episode is named on the command line by its id, any unambiguous start of it, or its
name (``resolve``). Its chunk audio lives under ``<home>/episodes/<id>/chunks/`` and its
chunk results in the ledger; the transcripts written with ``--out`` are the user's and are
never removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from whisperfarm.assembly import assemble
from whisperfarm.errors import EpisodeNotFound, TranscriptionFailed, UsageError
from whisperfarm.ledger import EpisodeRecord, Ledger
from whisperfarm.processes import process_alive
from whisperfarm.states import ChunkState, EpisodeState
from whisperfarm.subtitles import CueStyle
from whisperfarm.transcripts import SUBTITLE_FORMATS, Transcript, write_outputs


@dataclass(frozen=True)
class EpisodeInfo:
    id: str
    name: str
    state: str
    model: str
    source: str
    duration: float | None
    chunks_total: int
    chunks_done: int
    chunks_dead: int
    created_at: float
    finished_at: float | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetryResult:
    episode: EpisodeRecord
    failed: int
    """Dead chunks put back in the queue."""
    missing: int
    """Done chunks whose result was missing, put back in the queue."""

    @property
    def requeued(self) -> int:
        return self.failed + self.missing


def resolve(ledger: Ledger, ref: str) -> EpisodeRecord:
    """The one episode ``ref`` names: its id, its name, or the start of its id, in that
    order (a name that is also the start of another episode's id names its episode)."""
    ref = ref.strip()
    matches = ledger.find_episodes(ref) if ref else []
    exact = [e for e in matches if e["id"] == ref]
    if exact:
        return exact[0]
    named = [e for e in matches if e["name"] == ref]
    if not matches:
        raise EpisodeNotFound(
            f"no episode {ref!r}: 'whisperfarm episodes' lists what the ledger holds"
        )
    candidates = named or matches
    if len(candidates) > 1:
        listed = ", ".join(f"{e['id']} ({e['name']}, {e['model']})" for e in candidates[:5])
        more = f" and {len(candidates) - 5} more" if len(candidates) > 5 else ""
        how = "give its id (or the start of it)" if named else "give more of the id"
        raise UsageError(f"{ref!r} matches {len(candidates)} episodes: {listed}{more}; {how}")
    return candidates[0]


def list_episodes(ledger: Ledger) -> list[EpisodeInfo]:
    infos = []
    for episode in ledger.episodes():
        progress = ledger.progress(episode["id"])
        infos.append(
            EpisodeInfo(
                id=episode["id"],
                name=episode["name"],
                state=episode["state"],
                model=episode["model"],
                source=episode["source"],
                duration=episode["duration"],
                chunks_total=progress.total,
                chunks_done=progress.done,
                chunks_dead=progress.dead,
                created_at=episode["created_at"],
                finished_at=episode["finished_at"],
                error=episode["error"],
            )
        )
    return infos


def export(
    ledger: Ledger,
    ref: str,
    out_dir: Path,
    formats: list[str],
    *,
    keep_words: bool | None = None,
    stem: str | None = None,
    subtitles: CueStyle | None = None,
) -> tuple[EpisodeRecord, list[Path]]:
    """Write the episode's transcript in ``formats`` from its stored results.
    Returns the episode and the files written. ``keep_words`` defaults to whether the
    episode was transcribed with word timestamps. ``subtitles``: srt and vtt cues."""
    episode = resolve(ledger, ref)
    chunks = ledger.chunks(episode["id"])
    done = [c for c in chunks if c["state"] == ChunkState.DONE]
    if episode["state"] == EpisodeState.CHUNKING or not chunks or len(done) < len(chunks):
        dead = sum(1 for c in chunks if c["state"] == ChunkState.DEAD)
        failed = f", {dead} failed" if dead else ""
        fix = (
            f"'whisperfarm retry {episode['id']}' re-queues the failed ones; then " if dead else ""
        )
        raise TranscriptionFailed(
            f"{episode['name']} is not finished ({len(done)} of {len(chunks)} chunks done"
            f"{failed}): {fix}run 'whisperfarm transcribe {episode['source']}' to finish it"
        )
    lost = ledger.missing_results(episode["id"])
    if lost:
        raise TranscriptionFailed(
            f"{episode['name']}: the results of {len(lost)} chunk(s) are missing "
            f"(first: chunk {lost[0]['idx']}); 'whisperfarm retry {episode['id']}' "
            "re-queues them to be transcribed again"
        )
    with_words = bool(json.loads(episode["options"] or "{}").get("word_timestamps"))
    if keep_words and not with_words:
        # An error, not a warning: asked for by name, words missing from the json and srt
        # timed without them would pass for what was asked, in scripts above all.
        raise UsageError(
            f"{episode['name']} was transcribed without word timestamps, so there are none "
            f"to export: 'whisperfarm transcribe {episode['source']} --words' adds them "
            "(the results without them are kept), or export without --words"
        )
    if keep_words is None:
        keep_words = with_words
    transcript = assemble(ledger, episode, keep_words=keep_words)
    if subtitles is not None and subtitles.highlight_words:
        _refuse_karaoke_without_words(episode, transcript, formats)
    return episode, write_outputs(
        transcript, out_dir, stem or episode["name"], formats, subtitles=subtitles
    )


def _refuse_karaoke_without_words(
    episode: EpisodeRecord, transcript: Transcript, formats: list[str]
) -> None:
    asked = [name for name in formats if name in SUBTITLE_FORMATS]
    if asked and not any(segment.words for segment in transcript.segments):
        raise UsageError(
            f"{episode['name']} has no word timings to highlight in {', '.join(asked)}: "
            f"transcribe it with --words (or drop --no-words), or export without "
            "--highlight-words"
        )


def retry(ledger: Ledger, ref: str) -> RetryResult:
    """Put the episode's failed chunks (and done ones whose result is missing) back in
    the queue. A running farm picks them up; otherwise transcribing the file again does."""
    episode = resolve(ledger, ref)
    if episode["chunk_count"] is None and episode["state"] == EpisodeState.FAILED:
        raise UsageError(
            f"{episode['name']} failed before it was cut into chunks ({episode['error']}): "
            f"run 'whisperfarm transcribe {episode['source']}' again"
        )
    missing = ledger.missing_results(episode["id"])
    failed = ledger.requeue(episode["id"], states=(ChunkState.DEAD,))
    lost = ledger.requeue_chunks([c["id"] for c in missing]) if missing else 0
    if failed + lost and episode["state"] in (EpisodeState.FAILED, EpisodeState.DONE):
        ledger.update_episode(
            episode["id"], state=EpisodeState.QUEUED, error=None, finished_at=None
        )
    return RetryResult(ledger.episode(episode["id"]), failed, lost)


def remove(
    ledger: Ledger,
    ref: str,
    episodes_dir: Path,
    *,
    alive: Callable[[int], bool] | None = None,
) -> EpisodeRecord:
    """Delete the episode from the ledger, then its chunk audio and results from disk.
    Refuses while a live run is transcribing it. ``alive(pid)`` says whether a run's
    process still runs (default: ``whisperfarm.processes.process_alive``)."""
    alive = alive or process_alive
    episode = resolve(ledger, ref)
    for run in ledger.running_runs([episode["id"]]):
        if run["pid"] and alive(run["pid"]):
            raise UsageError(
                f"run {run['id']} (pid {run['pid']}) is transcribing {episode['name']}: "
                "stop it first (Ctrl-C in its terminal), then remove the episode"
            )
    files = episode_dir(episodes_dir, episode["id"])
    ledger.delete_episode(episode["id"])
    shutil.rmtree(files, ignore_errors=True)
    return episode


def episode_dir(episodes_dir: Path, episode_id: str) -> Path:
    """``<episodes_dir>/<id>``, refusing an id that would point anywhere else."""
    if not episode_id or episode_id in (".", "..") or Path(episode_id).name != episode_id:
        raise UsageError(f"refusing an episode id that is not a plain name: {episode_id!r}")
    return episodes_dir / episode_id
