"""Reading audio: find ffmpeg, check a file is audio, hash it, decode it to 16 kHz mono PCM.

Decoding runs ffmpeg (through ffmpeg-python) as a separate process that streams raw PCM
over a pipe, so an hours-long file never sits in memory whole and the CLI's own work
overlaps the decoding.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import ffmpeg
import numpy as np

from whisperfarm.errors import InputError

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2  # s16le


@cache
def ffmpeg_exe() -> str:
    """ffmpeg from WHISPERFARM_FFMPEG, else PATH, else the binary in the imageio-ffmpeg wheel."""
    explicit = os.environ.get("WHISPERFARM_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as error:  # pragma: no cover - it is a dependency
        raise InputError(
            "ffmpeg not found: install ffmpeg or `pip install imageio-ffmpeg`"
        ) from error
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    duration: float | None  # what the audio stream (else the container) declares, or None
    codec: str
    size: int


def check_input(path: Path) -> AudioInfo:
    """Fail with one clear line unless ``path`` is a readable file with an audio stream."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory: give the audio files inside it")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes): nothing to transcribe")
    import av  # PyAV, a faster-whisper dependency: reads the container without decoding

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams:
                raise InputError(f"{path} has no audio stream: give an audio or video file")
            stream = streams[0]
            # The audio stream's own duration first: a video's container lasts as long
            # as its longest track, and a video track may outlast the audio.
            duration = None
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            codec = stream.codec_context.name
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise InputError(
            f"{path} is not audio ffmpeg can read ({_reason(error)}): check the file "
            "or convert it with ffmpeg first"
        ) from error
    return AudioInfo(path=path, duration=duration, codec=codec, size=size)


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def content_hash(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Decoder:
    """Streams ``path`` as 16 kHz mono int16 blocks; ``close()`` reports ffmpeg's verdict."""

    def __init__(self, path: Path, *, block_seconds: float = 10.0):
        self.path = path
        self.block_bytes = int(block_seconds * SAMPLE_RATE) * BYTES_PER_SAMPLE
        stream = (
            ffmpeg.input(str(path))
            .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, map="0:a:0")
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-vn")
        )
        self.process: subprocess.Popen[bytes] = stream.run_async(
            cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True
        )
        self._stderr: list[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.samples = 0

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if len(self._stderr) < 200:
                self._stderr.append(line)

    def blocks(self) -> Iterator[np.ndarray]:
        assert self.process.stdout is not None
        pending = b""
        while True:
            data = self.process.stdout.read(self.block_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % BYTES_PER_SAMPLE
            pending = data[usable:]
            block = np.frombuffer(data[:usable], dtype="<i2")
            self.samples += len(block)
            yield block

    def close(self) -> None:
        """Wait for ffmpeg; raise InputError if it failed or decoded nothing."""
        if self.process.stdout:
            self.process.stdout.close()
        code = self.process.wait()
        self._stderr_thread.join(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        errors = b"".join(self._stderr).decode("utf-8", "replace").strip()
        if code != 0 or self.samples == 0:
            detail = errors.splitlines()[-1] if errors else f"ffmpeg exited with {code}"
            raise InputError(f"{self.path}: ffmpeg could not decode the audio ({detail})")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr_thread.join(timeout=5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe:
                pipe.close()


def duration_of(samples: int) -> float:
    return samples / SAMPLE_RATE
