"""Writing chunk audio: Opus in Ogg (for chunks that cross a network), FLAC, or WAV.

A chunk travels to its worker once, and over a laptop's uplink to a fleet those bytes are
the bottleneck: WAV costs 115 MB per hour of audio, Opus at 24 kbit/s about 11 MB. Chunks
are encoded by the ffmpeg binary the CLI already decodes with (``media.ffmpeg_exe``; PyAV's
Opus encoder was found slow), one short process per chunk, in a small thread pool
(``ChunkWriter``) so encoding overlaps the cutting instead of waiting on it. Workers decode
with PyAV (``worker.audio``); the formats and their content types live there.
"""

from __future__ import annotations

import subprocess
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from whisperfarm.chunking import write_wav
from whisperfarm.errors import InputError
from whisperfarm.media import SAMPLE_RATE, ffmpeg_exe
from worker.audio import ChunkFormat

OPUS_BITRATE = "24k"
"""VBR target, mono, ``-application audio`` (libopus's default: keep the waveform rather
than shape it for a listener, as ``voip`` does). About 10-11 MB per audio hour. What WER
moves by (scripts/bench_audio.py, README) is single words the model already gets wrong
flipping either way; 32 and 48 kbit/s flipped as many, and ``voip`` at 24 kbit/s one
more on the sentences."""

_CODEC_ARGS: dict[ChunkFormat, list[str]] = {
    ChunkFormat.OPUS: [
        *("-c:a", "libopus", "-b:a", OPUS_BITRATE, "-vbr", "on", "-application", "audio"),
        *("-f", "ogg"),
    ],
    ChunkFormat.FLAC: ["-c:a", "flac", "-compression_level", "5", "-f", "flac"],
}


def chunk_path(chunks_dir: Path, idx: int, chunk_format: ChunkFormat) -> Path:
    return chunks_dir / f"{idx:05d}{chunk_format.suffix}"


def write_chunk(path: Path, samples: np.ndarray, chunk_format: ChunkFormat) -> None:
    """Write int16 16 kHz mono ``samples`` to ``path`` in ``chunk_format``, under a
    temporary name renamed into place (a crash leaves no half-written chunk)."""
    if chunk_format is ChunkFormat.WAV:
        write_wav(path, samples)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    command = [
        ffmpeg_exe(),
        *("-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0"),
        *_CODEC_ARGS[chunk_format],
        str(partial),
    ]
    done = subprocess.run(
        command, input=samples.astype("<i2").tobytes(), capture_output=True, check=False
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"ffmpeg exited with {done.returncode}"
        raise InputError(
            f"ffmpeg ({ffmpeg_exe()}) could not encode chunk audio as {chunk_format} "
            f'({detail}): set chunk_format = "flac" or "wav" (WHISPERFARM_CHUNK_FORMAT), '
            "or install an ffmpeg built with libopus"
        )
    partial.replace(path)


T = TypeVar("T")


class ChunkWriter(Generic[T]):
    """Writes chunks in a thread pool and hands them back in the order they were given,
    each once its file is in place: ``submit`` yields every chunk finished so far (in
    order), ``drain`` the rest. At most ``ahead`` chunks wait in memory."""

    def __init__(
        self,
        chunk_format: ChunkFormat,
        *,
        threads: int = 2,
        ahead: int = 4,
        write: Callable[[Path, np.ndarray, ChunkFormat], None] = write_chunk,
    ):
        self.chunk_format = chunk_format
        self.ahead = ahead
        self.write = write
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chunk-writer")
        self._pending: deque[tuple[T, Future[None]]] = deque()

    def submit(self, item: T, path: Path, samples: np.ndarray) -> Iterator[T]:
        future = self._pool.submit(self.write, path, samples, self.chunk_format)
        self._pending.append((item, future))
        while self._pending and (self._pending[0][1].done() or len(self._pending) > self.ahead):
            yield self._pop()

    def drain(self) -> Iterator[T]:
        while self._pending:
            yield self._pop()

    def _pop(self) -> T:
        item, future = self._pending.popleft()
        future.result()  # the write's error, if it failed
        return item

    def close(self) -> None:
        """Stop: drop chunks not started yet, wait for those being written."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
