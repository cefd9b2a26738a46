"""Chunk audio on the wire: the formats a chunk travels in, and the worker's decoder.

The coordinator serves each chunk with the content type of the format it was written in
(``ChunkFormat.for_path``); the worker decodes it by that content type to the 16 kHz mono
float32 samples the model takes. Opus and FLAC are decoded by PyAV (faster-whisper's own
dependency), so the worker needs no ffmpeg binary; WAV, the format of chunks cut by
earlier versions and still on disk when a ledger resumes, is read with the standard
library as before.
"""

from __future__ import annotations

import io
import wave
from enum import StrEnum
from pathlib import PurePath
from typing import NamedTuple

import numpy as np

SAMPLE_RATE = 16_000


class ChunkFormat(StrEnum):
    """How chunk audio is stored and sent: the setting's values (``chunk_format``)."""

    OPUS = "opus"
    FLAC = "flac"
    WAV = "wav"

    @property
    def suffix(self) -> str:
        return _SUFFIXES[self]

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @classmethod
    def for_path(cls, path: str | PurePath) -> ChunkFormat:
        """The format of a chunk file, by its suffix (ValueError if it has none of ours)."""
        suffix = PurePath(path).suffix
        for chunk_format, known in _SUFFIXES.items():
            if suffix == known:
                return chunk_format
        raise ValueError(f"{path}: not a chunk audio file (.opus, .flac or .wav)")

    @classmethod
    def for_content_type(cls, content_type: str) -> ChunkFormat:
        media = content_type.split(";")[0].strip().lower()
        for chunk_format, known in _CONTENT_TYPES.items():
            if media == known:
                return chunk_format
        raise AudioError(
            f"chunk audio of type {content_type!r} is not one this worker decodes "
            f"({', '.join(_CONTENT_TYPES.values())}): run a worker of the coordinator's version"
        )


_SUFFIXES = {ChunkFormat.OPUS: ".opus", ChunkFormat.FLAC: ".flac", ChunkFormat.WAV: ".wav"}
_CONTENT_TYPES = {
    ChunkFormat.OPUS: "audio/ogg",
    ChunkFormat.FLAC: "audio/flac",
    ChunkFormat.WAV: "audio/wav",
}


class AudioError(ValueError):
    """Chunk audio the worker can't decode (corrupt, truncated, or of an unknown type)."""


class ChunkAudio(NamedTuple):
    """A chunk's audio as the coordinator sent it."""

    data: bytes
    content_type: str


def decode(audio: ChunkAudio) -> np.ndarray:
    """The chunk's samples: 16 kHz mono float32 in [-1, 1]."""
    chunk_format = ChunkFormat.for_content_type(audio.content_type)
    if chunk_format is ChunkFormat.WAV:
        return wav_to_float(audio.data)
    return _decode_compressed(audio.data, chunk_format)


def wav_to_float(data: bytes) -> np.ndarray:
    """16-bit mono WAV bytes → float32 samples in [-1, 1]."""
    try:
        with wave.open(io.BytesIO(data), "rb") as handle:
            if handle.getsampwidth() != 2 or handle.getnchannels() != 1:
                raise AudioError("chunk audio must be 16-bit mono WAV")
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as error:
        raise AudioError(f"chunk audio (audio/wav) is corrupt: {error}") from error
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def _decode_compressed(data: bytes, chunk_format: ChunkFormat) -> np.ndarray:
    import av  # PyAV: faster-whisper's dependency, in the worker image; slow to import

    parts: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"chunk audio ({chunk_format.content_type}) has no audio stream")
            stream = container.streams.audio[0]
            # s16 as the cutter's samples were: the model sees the same scale and steps
            # as from a WAV chunk (and as faster-whisper's own decode_audio gives it).
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError) as error:
        raise AudioError(
            f"chunk audio ({chunk_format.content_type}) is corrupt: {error}"
        ) from error
    if not parts:
        raise AudioError(f"chunk audio ({chunk_format.content_type}) holds no samples")
    return np.concatenate(parts).astype(np.float32) / 32768.0
