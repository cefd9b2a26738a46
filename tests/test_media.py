from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import SAMPLE
from whisperfarm.errors import InputError
from whisperfarm.media import SAMPLE_RATE, Decoder, check_input, content_hash, ffmpeg_exe


def test_sample_is_audio_with_a_duration() -> None:
    info = check_input(SAMPLE)
    assert info.duration is not None and 60 < info.duration < 600
    assert info.size == SAMPLE.stat().st_size


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "is empty"),
        (lambda p: (p.write_text("just some text, not audio\n" * 20), p)[1], "not audio"),
        (lambda p: (p.write_bytes(np.random.default_rng(1).bytes(50_000)), p)[1], "not audio"),
    ],
    ids=["missing", "directory", "empty", "text", "random-bytes"],
)
def test_bad_inputs_name_the_problem(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path / "episode.mp3")
    with pytest.raises(InputError, match=message):
        check_input(path)


def test_decoder_streams_16k_mono_int16() -> None:
    decoder = Decoder(SAMPLE, block_seconds=5)
    blocks = list(decoder.blocks())
    decoder.close()
    assert all(block.dtype == np.dtype("<i2") for block in blocks)
    assert max(len(block) for block in blocks) <= 5 * SAMPLE_RATE
    info = check_input(SAMPLE)
    assert info.duration is not None
    assert abs(decoder.samples / SAMPLE_RATE - info.duration) < 0.2


def test_decoder_reports_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF" + b"\x00" * 100)
    decoder = Decoder(path)
    list(decoder.blocks())
    with pytest.raises(InputError, match="could not decode"):
        decoder.close()


def test_content_hash_changes_with_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) == content_hash(a)


def test_ffmpeg_override(monkeypatch: pytest.MonkeyPatch) -> None:
    ffmpeg_exe.cache_clear()
    monkeypatch.setenv("WHISPERFARM_FFMPEG", "/opt/custom/ffmpeg")
    try:
        assert ffmpeg_exe() == "/opt/custom/ffmpeg"
    finally:
        ffmpeg_exe.cache_clear()


def _ffmpeg(*args: str) -> None:
    import subprocess

    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args],
        check=True,
        timeout=120,
    )


def test_video_with_audio_decodes_its_audio(tmp_path: Path) -> None:
    video = tmp_path / "talk.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5",
        "-i",
        str(SAMPLE),
        "-t",
        "8",
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        "-shortest",
        str(video),
    )
    info = check_input(video)
    assert info.duration is not None and 7 < info.duration < 9
    decoder = Decoder(video)
    samples = np.concatenate(list(decoder.blocks()))
    decoder.close()
    assert abs(len(samples) / SAMPLE_RATE - 8) < 0.2
    assert np.abs(samples).max() > 1000, "the audio track, not silence"


def test_a_video_track_longer_than_the_audio_is_not_the_audio_s_duration(
    tmp_path: Path,
) -> None:
    """The audio stream's own duration is what decodes: a container lasting as long as a
    longer video track must not make the audio look truncated."""
    video = tmp_path / "talk.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=12"),
        *("-t", "8", "-i", str(SAMPLE)),
        *("-c:v", "mpeg4", "-c:a", "aac", str(video)),
    )
    import av

    with av.open(str(video)) as container:
        declared = container.duration
    assert declared is not None and declared / 1_000_000 > 11.5, "the video outlasts the audio"
    info = check_input(video)
    assert info.duration is not None and 7.5 < info.duration < 8.5


def test_video_without_audio_is_refused(tmp_path: Path) -> None:
    video = tmp_path / "silent film.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "2", "-c:v", "mpeg4", str(video)
    )
    with pytest.raises(InputError, match="no audio stream"):
        check_input(video)


def test_names_with_spaces_and_non_ascii_characters(tmp_path: Path) -> None:
    odd = tmp_path / "épisode n°1 — ünïcödé.mp3"
    odd.write_bytes(SAMPLE.read_bytes())
    assert check_input(odd).duration == check_input(SAMPLE).duration
    decoder = Decoder(odd, block_seconds=60)
    first = next(iter(decoder.blocks()))
    decoder.kill()
    assert len(first) == 60 * SAMPLE_RATE
