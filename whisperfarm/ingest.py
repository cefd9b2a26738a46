"""Turning an input file into an episode with queued chunk jobs.

An episode is identified by the file's content hash and the model, so running the same
command again finds it and keeps every finished chunk (the cutter is deterministic).
Chunks are queued as they are cut, so workers start before decoding ends.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisperfarm.chunk_audio import ChunkWriter, chunk_path
from whisperfarm.chunking import CutterConfig, cut
from whisperfarm.decoding import Decoding
from whisperfarm.errors import InputError
from whisperfarm.ledger import ChunkPlan, Ledger
from whisperfarm.media import AudioInfo, Decoder, content_hash, duration_of
from whisperfarm.states import ChunkState, EpisodeState
from worker.audio import ChunkFormat


@dataclass(frozen=True)
class EpisodeRequest:
    path: Path
    info: AudioInfo
    model: str
    options: dict[str, Any] | None
    """The decoding options to transcribe with; None: those the episode recorded (an
    episode taken from the queue), or the defaults for one the ledger doesn't hold."""


def episode_id_for(digest: str, model: str) -> str:
    return hashlib.sha256(f"{digest}:{model}".encode()).hexdigest()[:12]


def register(ledger: Ledger, request: EpisodeRequest) -> tuple[str, bool]:
    """Find or create the episode. Returns (episode id, needs chunking)."""
    digest = content_hash(request.path)
    existing = ledger.find_episode(digest, request.model)
    if existing is None:
        episode = ledger.create_episode(
            episode_id=episode_id_for(digest, request.model),
            name=request.path.stem,
            source=str(request.path.resolve()),
            content_hash=digest,
            model=request.model,
            options=Decoding().options() if request.options is None else request.options,
        )
        ledger.update_episode(episode["id"], duration=request.info.duration)
        return episode["id"], True
    episode_id = existing["id"]
    # The episode takes the name and place of the file it was last seen as.
    fields: dict[str, Any] = {
        "name": request.path.stem,
        "source": str(request.path.resolve()),
        "error": None,
    }
    if request.options is not None and json.loads(existing["options"]) != request.options:
        # Other decoding options: the chunks with a result made with them are reused, the
        # others queued; the results made with the earlier options stay for a rerun.
        ledger.switch_options(episode_id, request.options)
    else:
        # A rerun: hand back what a dead run held, and give dead chunks a fresh start.
        ledger.requeue(episode_id)
    chunking_done = (
        existing["state"] != EpisodeState.CHUNKING and existing["chunk_count"] is not None
    )
    if _audio_gone(ledger, episode_id):
        # A done episode's chunk audio is deleted (reclaim.py); chunks to transcribe
        # again need it back: they are set aside until the file is cut again (the same
        # cut queues each in place), and every chunk keeps its results, under whatever
        # options they were made with. Also after a run stopped during such a cut.
        ledger.await_audio(episode_id)
        chunking_done = False
        fields["state"] = EpisodeState.CHUNKING
    if existing["state"] in (EpisodeState.FAILED, EpisodeState.DONE):
        fields["state"] = EpisodeState.QUEUED if chunking_done else EpisodeState.CHUNKING
    ledger.update_episode(episode_id, **fields)
    return episode_id, not chunking_done


def _audio_gone(ledger: Ledger, episode_id: str) -> bool:
    """Whether a chunk left to transcribe has lost its audio file."""
    return any(
        chunk["state"] != ChunkState.DONE and not Path(chunk["audio_path"]).exists()
        for chunk in ledger.chunks(episode_id)
    )


def chunk_episode(
    ledger: Ledger,
    episode_id: str,
    request: EpisodeRequest,
    *,
    chunks_dir: Path,
    config: CutterConfig,
    cancel: threading.Event | None = None,
    chunk_format: ChunkFormat,
) -> int:
    """Decode, cut, encode and queue every chunk. Returns the number of chunks. Chunks
    are encoded in a thread pool while the cutting goes on, and each is queued once its
    file is written, in order."""
    ledger.update_episode(episode_id, state=EpisodeState.CHUNKING)
    decoder = Decoder(request.path)
    writer: ChunkWriter[tuple[ChunkPlan, Path]] = ChunkWriter(chunk_format)
    count = 0

    def queue(plan: ChunkPlan, audio_path: Path) -> None:
        nonlocal count
        ledger.add_chunk(episode_id, plan, str(audio_path))
        count += 1

    try:
        for plan, audio in cut(decoder.blocks(), config):
            if cancel is not None and cancel.is_set():
                decoder.kill()
                raise InterruptedError("chunking cancelled")
            audio_path = chunk_path(chunks_dir, plan.idx, chunk_format)
            for written in writer.submit((plan, audio_path), audio_path, audio):
                queue(*written)
        for written in writer.drain():
            queue(*written)
    except BaseException:
        decoder.kill()
        raise
    finally:
        writer.close()
    decoder.close()
    duration = duration_of(decoder.samples)
    declared = request.info.duration
    if declared and duration < declared * 0.97 - 1.0:
        raise InputError(
            f"{request.path} looks truncated: it declares {declared:.0f}s but only "
            f"{duration:.0f}s decodes; check the file (re-download or re-export it)"
        )
    ledger.finish_chunking(episode_id, duration=duration, chunk_count=count)
    return count
