"""Chunk audio on disk and on the wire: written by the real ffmpeg binary (Opus, FLAC,
WAV), decoded by the worker's decoder (PyAV for Opus and FLAC); the writer's thread pool
hands chunks back in order; corrupt or unknown audio fails with one clear message."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from whisperfarm import chunk_audio
from whisperfarm.chunk_audio import ChunkWriter, chunk_path, write_chunk
from whisperfarm.errors import InputError
from whisperfarm.farm import chunk_format_for
from whisperfarm.media import Decoder
from whisperfarm.settings import Settings
from worker.audio import AudioError, ChunkAudio, ChunkFormat, decode

RATE = 16_000
JFK = Path(__file__).resolve().parents[1] / "samples" / "real" / "fw-jfk.flac"


def jfk() -> np.ndarray:
    decoder = Decoder(JFK)
    samples = np.concatenate(list(decoder.blocks()))
    decoder.close()
    return samples


def rms_db(samples: np.ndarray) -> float:
    floats = samples.astype(np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(floats * floats)) + 1e-12))


def round_trip(tmp_path: Path, samples: np.ndarray, chunk_format: ChunkFormat) -> np.ndarray:
    path = chunk_path(tmp_path / "chunks", 7, chunk_format)
    write_chunk(path, samples, chunk_format)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"00007{chunk_format.suffix}"]
    return decode(ChunkAudio(path.read_bytes(), chunk_format.content_type))


@pytest.mark.parametrize("chunk_format", list(ChunkFormat))
def test_a_chunk_round_trips_with_its_length_and_level(
    tmp_path: Path, chunk_format: ChunkFormat
) -> None:
    samples = jfk()  # 11 s of real speech
    decoded = round_trip(tmp_path, samples, chunk_format)

    assert decoded.dtype == np.float32
    assert len(decoded) == len(samples)  # Opus's pre-skip and padding are trimmed
    level = rms_db(decoded * 32768) - rms_db(samples)
    assert abs(level) < 0.5  # dB
    if chunk_format is ChunkFormat.OPUS:
        # Lossy, but the same waveform: strongly correlated, sample for sample (no shift).
        assert np.corrcoef(decoded, samples)[0, 1] > 0.9
    else:  # lossless: exactly what the cutter had, as the WAV path always gave the model
        np.testing.assert_array_equal(decoded, samples.astype(np.float32) / 32768.0)


def test_opus_is_compact_and_flac_lossless_smaller_than_wav(tmp_path: Path) -> None:
    samples = jfk()
    sizes = {}
    for chunk_format in ChunkFormat:
        path = chunk_path(tmp_path, 0, chunk_format)
        write_chunk(path, samples, chunk_format)
        sizes[chunk_format] = path.stat().st_size
    seconds = len(samples) / RATE
    assert sizes[ChunkFormat.WAV] == pytest.approx(2 * len(samples), abs=100)
    assert sizes[ChunkFormat.FLAC] < 0.8 * sizes[ChunkFormat.WAV]
    # 15 MB per audio hour is 4,167 bytes per second.
    assert sizes[ChunkFormat.OPUS] / seconds < 15e6 / 3600


def test_a_short_and_a_silent_chunk_round_trip(tmp_path: Path) -> None:
    short = (np.sin(np.arange(800) / 5) * 8000).astype(np.int16)  # 50 ms
    assert len(round_trip(tmp_path, short, ChunkFormat.OPUS)) == len(short)
    silent = np.zeros(RATE, dtype=np.int16)
    decoded = round_trip(tmp_path / "silent", silent, ChunkFormat.OPUS)
    assert len(decoded) == RATE and np.abs(decoded).max() < 1e-3


def test_a_failed_encode_names_the_fix_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunk_audio, "ffmpeg_exe", lambda: "false")  # exits 1, says nothing
    path = chunk_path(tmp_path, 0, ChunkFormat.OPUS)
    with pytest.raises(InputError, match='chunk_format = "flac" or "wav"'):
        write_chunk(path, np.zeros(RATE, dtype=np.int16), ChunkFormat.OPUS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk_format", [ChunkFormat.OPUS, ChunkFormat.FLAC, ChunkFormat.WAV])
def test_corrupt_chunk_audio_is_an_audio_error_naming_its_type(
    tmp_path: Path, chunk_format: ChunkFormat
) -> None:
    path = chunk_path(tmp_path, 0, chunk_format)
    write_chunk(path, jfk(), chunk_format)
    data = path.read_bytes()
    garbled = data[:64] + bytes(len(data) - 64)  # header kept, the rest zeroed
    for broken in (b"", b"not audio at all", data[:20], garbled):
        try:
            samples = decode(ChunkAudio(broken, chunk_format.content_type))
        except AudioError as error:
            assert chunk_format.content_type in str(error) or "mono" in str(error)
            continue
        # A decoder may make something of a valid header over zeros: never noise.
        assert broken is garbled and np.abs(samples).max() < 0.01


def test_an_unknown_content_type_names_the_fix() -> None:
    with pytest.raises(AudioError, match="run a worker of the coordinator's version"):
        decode(ChunkAudio(b"ID3...", "audio/mpeg"))


def test_content_types_and_suffixes() -> None:
    assert ChunkFormat.for_content_type("audio/ogg; codecs=opus") is ChunkFormat.OPUS
    assert ChunkFormat.for_content_type("Audio/FLAC") is ChunkFormat.FLAC
    assert ChunkFormat.for_path("/h/episodes/e/chunks/00003.wav") is ChunkFormat.WAV
    assert ChunkFormat.for_path(Path("00003.opus")) is ChunkFormat.OPUS
    with pytest.raises(ValueError, match="not a chunk audio file"):
        ChunkFormat.for_path("00003.partial")


# The writer's pool ----------------------------------------------------------------------


def test_the_writer_hands_chunks_back_in_order_each_after_its_file_is_written(
    tmp_path: Path,
) -> None:
    written: set[int] = set()
    lock = threading.Lock()

    def slow_first(path: Path, samples: np.ndarray, chunk_format: ChunkFormat) -> None:
        if samples[0] == 0:
            time.sleep(0.2)  # the first chunk finishes last
        with lock:
            written.add(int(samples[0]))

    writer: ChunkWriter[int] = ChunkWriter(ChunkFormat.OPUS, ahead=8, write=slow_first)
    handed: list[int] = []
    try:
        for idx in range(6):
            for item in writer.submit(idx, tmp_path / f"{idx}", np.full(4, idx, np.int16)):
                assert item in written  # queued only once on disk
                handed.append(item)
        handed.extend(writer.drain())
    finally:
        writer.close()
    assert handed == list(range(6))


def test_the_writer_raises_a_failed_write_in_order(tmp_path: Path) -> None:
    def fail_on_two(path: Path, samples: np.ndarray, chunk_format: ChunkFormat) -> None:
        if samples[0] == 2:
            raise InputError("ffmpeg could not encode")

    writer: ChunkWriter[int] = ChunkWriter(ChunkFormat.OPUS, ahead=1, write=fail_on_two)
    handed: list[int] = []
    with pytest.raises(InputError, match="could not encode"):
        for idx in range(5):
            handed.extend(writer.submit(idx, tmp_path / f"{idx}", np.full(4, idx, np.int16)))
        handed.extend(writer.drain())
    writer.close()
    assert handed == [0, 1]


# Which format a run writes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "only_local_workers", "expected"),
    [
        ({}, True, ChunkFormat.WAV),  # local workers only: loopback, no encoding cost
        ({}, False, ChunkFormat.OPUS),  # Fly machines, serve, or workers from elsewhere
        ({"chunk_format": "flac"}, False, ChunkFormat.FLAC),
        ({"chunk_format": "opus"}, True, ChunkFormat.OPUS),
        ({"chunk_format": "wav"}, False, ChunkFormat.WAV),
    ],
)
def test_auto_sends_opus_where_chunks_cross_a_network(
    settings: dict[str, object], only_local_workers: bool, expected: ChunkFormat
) -> None:
    chosen = chunk_format_for(
        Settings.model_validate(settings), only_local_workers=only_local_workers
    )
    assert chosen is expected


def test_chunk_format_comes_from_the_environment_and_refuses_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WHISPERFARM_CHUNK_FORMAT", "flac")
    assert (
        chunk_format_for(Settings.model_validate({}), only_local_workers=True) is ChunkFormat.FLAC
    )
    monkeypatch.setenv("WHISPERFARM_CHUNK_FORMAT", "mp3")
    with pytest.raises(ValueError, match="auto"):
        Settings.model_validate({})
