"""Cutting at pauses, on synthetic int16 audio whose loud and quiet stretches are known.

"Speech" is white noise at -20 dBFS, a pause is white noise at -60 dBFS: these tests cut
by loudness alone (``CutterConfig(speech=None)``, also the fallback where the speech model
finds no pause), so that is all the test audio has to get right. Cutting with the speech
model is tested in test_speech.py."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from whisperfarm.chunking import CutterConfig, cut, find_cut, frame_db, has_speech, write_wav
from whisperfarm.ledger import ChunkPlan
from worker.audio import wav_to_float

RATE = 16_000
LOUD = -20.0
QUIET = -60.0


def loudness(**kwargs: float) -> CutterConfig:
    """A cutter that goes by loudness alone, without the speech model."""
    return CutterConfig(speech=None, **kwargs)


def noise(rng: np.random.Generator, seconds: float, dbfs: float) -> np.ndarray:
    std = 32768.0 * 10 ** (dbfs / 20)
    samples = rng.normal(0.0, std, round(seconds * RATE))
    return np.clip(samples, -32768, 32767).astype(np.int16)


def talk(
    rng: np.random.Generator, pattern: list[tuple[str, float]]
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Audio from ("speech"|"pause", seconds) pairs, and the (start, end) of each pause."""
    parts, pauses, t = [], [], 0
    for kind, seconds in pattern:
        part = noise(rng, seconds, LOUD if kind == "speech" else QUIET)
        if kind == "pause":
            pauses.append((t / RATE, (t + len(part)) / RATE))
        parts.append(part)
        t += len(part)
    return np.concatenate(parts), pauses


def random_talk(seed: int, seconds: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech of 2-6 s between pauses of 0.6-1.2 s, until ``seconds`` of audio."""
    rng = np.random.default_rng(seed)
    pattern, total = [], 0.0
    while total < seconds:
        speech, pause = rng.uniform(2.0, 6.0), rng.uniform(0.6, 1.2)
        pattern += [("speech", speech), ("pause", pause)]
        total += speech + pause
    pattern.append(("speech", 3.0))
    return talk(rng, pattern)


def plans_of(audio: np.ndarray, config: CutterConfig, block: int | None = None):
    blocks = (
        [audio] if block is None else [audio[i : i + block] for i in range(0, len(audio), block)]
    )
    return list(cut(blocks, config))


def assert_tiles(plans: list[ChunkPlan], duration: float) -> None:
    """Owned ranges cover the timeline from 0 to the end, no gap, no overlap."""
    assert [p.idx for p in plans] == list(range(len(plans)))
    assert plans[0].keep_start == 0.0
    assert plans[0].start == 0.0
    for left, right in itertools.pairwise(plans):
        assert left.keep_end == right.keep_start
        assert left.keep_start < left.keep_end
    assert plans[-1].keep_end == pytest.approx(duration, abs=1e-9)
    assert plans[-1].end == pytest.approx(duration, abs=1e-9)


def assert_audio_matches(audio: np.ndarray, chunks) -> None:
    """Each chunk's samples are exactly the source's samples between its start and end."""
    for plan, samples in chunks:
        first, last = round(plan.start * RATE), round(plan.end * RATE)
        assert samples.dtype == np.int16
        np.testing.assert_array_equal(samples, audio[first:last])


# Cutting at pauses --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cuts_land_inside_pauses_and_chunks_are_clean(seed: int) -> None:
    audio, pauses = random_talk(seed, 240)
    config = loudness()
    chunks = plans_of(audio, config)
    plans = [plan for plan, _ in chunks]

    assert len(plans) >= 8
    for plan in plans:
        assert (plan.start, plan.end) == (plan.keep_start, plan.keep_end)
        assert not plan.overlaps
        assert plan.speech
    for plan in plans[:-1]:
        assert any(a < plan.keep_end < b for a, b in pauses), plan
    assert_tiles(plans, len(audio) / RATE)
    assert_audio_matches(audio, chunks)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunks_cut_at_pauses_stay_between_min_and_max_seconds(seed: int) -> None:
    audio, _ = random_talk(seed, 240)
    config = loudness(min_seconds=12.0, max_seconds=29.0)
    plans = [plan for plan, _ in plans_of(audio, config)]
    for plan in plans:
        assert plan.end - plan.start <= config.max_seconds
    for plan in plans[:-1]:
        assert plan.end - plan.start >= config.min_seconds


def test_cut_is_in_the_middle_of_the_latest_pause_after_min_seconds() -> None:
    rng = np.random.default_rng(7)
    audio, pauses = talk(
        rng,
        [
            ("speech", 5.0),
            ("pause", 1.0),  # before min_seconds: ignored
            ("speech", 8.0),
            ("pause", 1.0),  # 14-15 s: a candidate, but not the latest
            ("speech", 8.0),
            ("pause", 1.0),  # 23-24 s: the latest pause before max_seconds
            ("speech", 4.0),
            ("pause", 0.1),  # 28-28.1 s: shorter than min_pause
            ("speech", 12.0),
        ],
    )
    plans = [plan for plan, _ in plans_of(audio, loudness())]
    assert plans[0].keep_end == pytest.approx(23.5, abs=0.04)
    assert plans[0].end == plans[0].keep_end
    assert pauses[2] == pytest.approx((23.0, 24.0))


def test_find_cut_reports_clean_only_for_a_real_pause() -> None:
    rng = np.random.default_rng(3)
    config = loudness()
    with_pause, _ = talk(rng, [("speech", 19.0), ("pause", 2.0), ("speech", 8.0)])
    frame, clean = find_cut(frame_db(with_pause), config)
    assert clean is True
    assert frame * 320 / RATE == pytest.approx(20.0, abs=0.04)

    without = noise(rng, 29.0, LOUD)
    frame, clean = find_cut(frame_db(without), config)
    assert clean is False
    assert config.min_seconds <= frame * 320 / RATE < config.max_seconds


# Cutting without a pause --------------------------------------------------------------------


def test_without_a_pause_chunks_overlap_around_the_cut_and_keep_ranges_tile() -> None:
    rng = np.random.default_rng(11)
    audio = noise(rng, 150.0, LOUD)
    config = loudness(overlap_seconds=1.5)
    chunks = plans_of(audio, config)
    plans = [plan for plan, _ in chunks]

    assert len(plans) >= 5
    assert_tiles(plans, len(audio) / RATE)
    assert_audio_matches(audio, chunks)
    for left, right in itertools.pairwise(plans):
        seam = left.keep_end
        assert left.end == pytest.approx(seam + 1.5, abs=1e-9)
        assert right.start == pytest.approx(seam - 1.5, abs=1e-9)
        assert left.overlaps and right.overlaps
    for plan in plans[:-1]:
        assert plan.keep_end - plan.keep_start >= config.min_seconds


def test_chunks_cut_without_a_pause_still_fit_max_seconds() -> None:
    """The audio sent to a worker, overlap included, must fit ``max_seconds`` (which is
    kept under Whisper's 30-second window). The quietest moment of continuous speech is
    placed near the end of each search window, as real audio may do."""
    rng = np.random.default_rng(5)
    audio = noise(rng, 100.0, LOUD)
    for dip in (28.5, 57.0, 85.5):  # a slightly softer 0.2 s, far from a pause
        at = round(dip * RATE)
        audio[at : at + RATE // 5] = noise(rng, 0.2, LOUD - 6)
    config = loudness(max_seconds=29.0, overlap_seconds=1.5)
    plans = [plan for plan, _ in plans_of(audio, config)]

    assert any(plan.overlaps for plan in plans)
    lengths = [round(plan.end - plan.start, 2) for plan in plans]
    assert max(lengths) <= config.max_seconds, lengths


# Silence ----------------------------------------------------------------------------------


def test_a_silent_stretch_yields_chunks_without_speech() -> None:
    rng = np.random.default_rng(9)
    audio, _ = talk(
        rng,
        [("speech", 8.0), ("pause", 0.8), ("speech", 8.0), ("pause", 70.0), ("speech", 10.0)],
    )
    silence = (16.8, 86.8)
    plans = [plan for plan, _ in plans_of(audio, loudness())]

    silent = [p for p in plans if silence[0] <= p.start and p.end <= silence[1]]
    assert silent, plans
    assert all(p.speech is False for p in silent)
    assert plans[0].speech is True
    assert plans[-1].speech is True
    assert_tiles(plans, len(audio) / RATE)


def test_has_speech() -> None:
    rng = np.random.default_rng(2)
    assert has_speech(noise(rng, 2.0, LOUD), -50.0) is True
    assert has_speech(noise(rng, 2.0, QUIET), -50.0) is False
    assert has_speech(np.zeros(16_000, dtype=np.int16), -50.0) is False
    assert has_speech(np.zeros(100, dtype=np.int16), -50.0) is False  # under one frame


def test_frame_db_measures_loudness_per_20ms_frame() -> None:
    full_scale_square = np.tile(np.array([32767, -32767], dtype=np.int16), 330)
    db = frame_db(full_scale_square)
    assert db.shape == (2,)  # 660 samples: two whole frames, the rest dropped
    assert db == pytest.approx([0.0, 0.0], abs=0.01)
    assert frame_db(np.zeros(0, dtype=np.int16)).shape == (0,)


# Short and empty input ----------------------------------------------------------------------


def test_audio_shorter_than_max_seconds_is_one_chunk() -> None:
    rng = np.random.default_rng(4)
    audio = noise(rng, 20.0, LOUD)
    ((plan, samples),) = plans_of(audio, loudness())
    assert plan == ChunkPlan(0, 0.0, 20.0, 0.0, 20.0, speech=True)
    np.testing.assert_array_equal(samples, audio)


def test_empty_stream_yields_nothing() -> None:
    assert list(cut(iter([]), loudness())) == []
    assert list(cut([np.zeros(0, dtype=np.int16)], loudness())) == []


# Streaming --------------------------------------------------------------------------------


def irregular_blocks(audio: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    at = 0
    while at < len(audio):
        size = int(rng.choice([0, 1, 319, 4_999, 16_000, 77_777]))
        yield audio[at : at + size]
        at += size


@pytest.mark.parametrize("kind", ["pauses", "no-pause"])
def test_same_chunks_whatever_the_block_sizes(kind: str) -> None:
    if kind == "pauses":
        audio, _ = random_talk(21, 100)
    else:
        audio = noise(np.random.default_rng(21), 100.0, LOUD)
    config = loudness()
    reference = plans_of(audio, config)
    assert len(reference) >= 3

    streams = {
        "one second": plans_of(audio, config, block=RATE),
        "odd size": plans_of(audio, config, block=4_999),
        "irregular": list(cut(irregular_blocks(audio, 5), config)),
    }
    for name, chunks in streams.items():
        assert [plan for plan, _ in chunks] == [plan for plan, _ in reference], name
        for (_, samples), (_, expected) in zip(chunks, reference, strict=True):
            np.testing.assert_array_equal(samples, expected)


def test_two_hour_stream_is_cut_with_a_bounded_buffer() -> None:
    """2 hours of 4.4 s speech + 0.6 s pause, fed 10 s at a time. The cutter must keep
    only about one chunk of audio: each chunk is yielded soon after its audio arrives, and
    memory stays at a few MB (the whole stream would be 230 MB)."""
    rng = np.random.default_rng(0)
    period = np.concatenate([noise(rng, 4.4, LOUD), noise(rng, 0.6, QUIET)])
    block = np.concatenate([period, period])
    blocks_total = 2 * 3600 // 10
    consumed = 0

    def stream() -> Iterator[np.ndarray]:
        nonlocal consumed
        for _ in range(blocks_total):
            consumed += len(block)
            yield block

    config = loudness()
    most_buffered = 0.0
    plans = []
    tracemalloc.start()
    try:
        for plan, samples in cut(stream(), config):
            assert len(samples) == round((plan.end - plan.start) * RATE)
            most_buffered = max(most_buffered, consumed / RATE - plan.keep_end)
            plans.append(plan)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # pauses every 5 s from 4.4 s on: the latest one before 29 s after each cut is 25 s on
    assert len(plans) == 288
    assert plans[0].keep_end == pytest.approx(24.7, abs=0.04)
    assert all(p.end - p.keep_start == pytest.approx(25.0, abs=0.04) for p in plans[1:-1])
    assert all(not p.overlaps for p in plans)
    assert plans[-1].end == pytest.approx(7200.0)
    assert most_buffered <= config.max_seconds + config.overlap_seconds + 10.0
    assert peak < 32 * 1024 * 1024


# Configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_seconds": 0.0}, "above 0"),
        ({"min_seconds": -1.0}, "above 0"),
        ({"min_seconds": 29.0, "max_seconds": 29.0}, "below max"),
        ({"min_seconds": 30.0, "max_seconds": 29.0}, "below max"),
        ({"min_seconds": 3.0, "overlap_seconds": 1.5}, "overlap"),
        ({"min_seconds": 4.0, "overlap_seconds": 2.5}, "overlap"),
    ],
)
def test_cutter_config_rejects_impossible_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CutterConfig(**kwargs)


def test_cutter_config_accepts_sane_settings() -> None:
    config = CutterConfig(min_seconds=5.0, max_seconds=10.0, overlap_seconds=2.4)
    assert (config.min_seconds, config.max_seconds, config.overlap_seconds) == (5.0, 10.0, 2.4)
    assert CutterConfig(overlap_seconds=0.0).overlap_seconds == 0.0


# WAV files --------------------------------------------------------------------------------


def test_write_wav_round_trips_through_wav_to_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples = noise(rng, 1.5, LOUD)
    samples[:4] = [32767, -32768, 0, 1]
    path = tmp_path / "chunks" / "00000.wav"

    write_wav(path, samples)

    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.wav"]  # no .partial left
    data = path.read_bytes()
    assert data[:4] == b"RIFF"
    floats = wav_to_float(data)
    assert floats.dtype == np.float32
    assert len(floats) == len(samples)
    np.testing.assert_array_equal(floats, samples.astype(np.float32) / 32768.0)
    assert floats[0] == pytest.approx(32767 / 32768)
    assert floats[1] == -1.0


def test_write_wav_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, np.ones(1000, dtype=np.int16))
    write_wav(path, np.full(10, 7, dtype=np.int16))
    np.testing.assert_array_equal(wav_to_float(path.read_bytes()) * 32768, np.full(10, 7.0))


def test_wav_to_float_rejects_stereo(tmp_path: Path) -> None:
    import wave

    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes(np.zeros(200, dtype="<i2").tobytes())
    with pytest.raises(ValueError, match="mono"):
        wav_to_float(path.read_bytes())
