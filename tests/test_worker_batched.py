"""The batched decode (worker.batched) against the sequential one it stands for, with the
real tiny.en on real speech: chunks decoded together read as each decoded alone, the
ones that take a second window included; with faster-whisper's padding the loop reads
as faster-whisper's own ``transcribe``; silence after a long chunk saves its second
window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import worker.batched
from whisperfarm.chunking import CutterConfig, cut
from whisperfarm.media import Decoder
from worker.batched import SILENCE_AFTER, Stopped, decode_batch
from worker.models import bundled_tiny_en
from worker.transcriber import Transcriber
from worker.wire import DecodeOptions

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
ENGLISH = DecodeOptions(language="en", beam_size=5)


def speech(path: Path) -> np.ndarray:
    decoder = Decoder(path)
    try:
        return np.concatenate(list(decoder.blocks()))
    finally:
        decoder.close()


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    """The sample episode's first three chunks as the cutter cuts them (26.6, 26.3 and
    26.6 s; with faster-whisper's padding the first leaves its last sentence to a second
    window), its first 40 s as one chunk (longer than a window: it takes a second one,
    whatever the CPU's arithmetic makes of the others) and JFK's 11 s: float32 as the
    worker decodes them."""
    episode = speech(SAMPLES / "episode.mp3")
    cut_chunks = [audio for _, audio in cut([episode], CutterConfig())]
    picked = [*cut_chunks[:3], episode[: 40 * 16_000], speech(SAMPLES / "real" / "fw-jfk.flac")]
    return [audio.astype(np.float32) / 32768.0 for audio in picked]


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    assert bundled_tiny_en() is not None, "the tiny.en model package is a dev dependency"
    return Transcriber(threads=2)


def counting_rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many chunks each round of the batched decode takes, from now on."""
    rounds: list[int] = []
    real_round = worker.batched._round

    def counting(whisper: object, tokenizer: object, options: object, going: list) -> None:
        rounds.append(len(going))
        real_round(whisper, tokenizer, options, going)

    monkeypatch.setattr(worker.batched, "_round", counting)
    return rounds


def texts_and_times(segments: list) -> list[tuple[str, float, float]]:
    return [(s.text, round(s.start, 3), round(s.end, 3)) for s in segments]


def test_a_batch_reads_as_each_chunk_decoded_alone(
    chunks: list[np.ndarray], transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk claimed with others reads as the same chunk claimed alone, the ones that
    take a second window (each with its whole text so far as the prompt) included."""
    rounds = counting_rounds(monkeypatch)
    batched = transcriber.transcribe_batch(chunks, model="tiny.en", options=ENGLISH)
    assert rounds[0] == len(chunks)  # decoded together
    assert len(rounds) > 1, "no chunk took a second window: the test lost its point"
    alone = [transcriber.transcribe(audio, model="tiny.en", options=ENGLISH) for audio in chunks]
    for together, single, audio in zip(batched, alone, chunks, strict=True):
        assert texts_and_times(together.segments) == texts_and_times(single.segments)
        assert (together.model, together.language) == ("tiny.en", "en")
        assert together.duration == pytest.approx(len(audio) / 16_000)


def test_with_faster_whispers_padding_the_batch_reads_as_faster_whisper(
    chunks: list[np.ndarray], transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched loop is faster-whisper's sequential decode, second windows included,
    when its windows are padded as faster-whisper pads them. Two chunks go on to a second
    round here (the first cut chunk and the 40-s one), their prompts of different lengths:
    once cut to the shorter, the 40-s chunk read "my favorite shoes were" where the
    sequential decode reads "my favorite shoes were a snack."."""
    whisper = transcriber.model("tiny.en")
    rounds = counting_rounds(monkeypatch)
    batched, language = decode_batch(
        whisper, chunks, language="en", beam_size=5, silence_after=None
    )
    assert language == "en"
    assert rounds[0] == len(chunks)  # one encode and one generate for every first window
    assert len(rounds) > 1 and rounds[1] >= 2, "the test lost its point: " + repr(rounds)
    for segments, audio in zip(batched, chunks, strict=True):
        sequential, _ = whisper.transcribe(audio, language="en", beam_size=5)
        assert texts_and_times(segments) == texts_and_times(list(sequential))


def test_a_long_chunks_window_is_its_audio_then_silence() -> None:
    """The features ``_chunk`` makes, without a model: a chunk of SILENCE_AFTER seconds or
    more fills its 30-s window with silence's features after its audio (one steady
    value, not faster-whisper's zero features); a shorter one, or any with
    ``silence_after=None``, has its audio's frames only, for pad_or_trim to pad with
    zeros. Either way the seek runs over the audio's frames alone."""
    from faster_whisper.feature_extractor import FeatureExtractor

    extractor = FeatureExtractor()
    tone = np.sin(np.arange(25 * 16_000) * 2 * np.pi * 440 / 16_000).astype(np.float32)

    long = worker.batched._chunk(extractor, tone, silence_after=SILENCE_AFTER)
    assert long.features.shape == (80, 3000)
    assert long.content_frames == 2500
    after = long.features[:, 2510:]
    assert np.ptp(after) == pytest.approx(0.0, abs=1e-6)
    assert after.min() != 0.0
    assert np.ptp(long.features[:, :2490]) > 1.0

    unpadded = worker.batched._chunk(extractor, tone, silence_after=None)
    assert unpadded.features.shape == (80, 2500) and unpadded.content_frames == 2500
    short = worker.batched._chunk(extractor, tone[: 14 * 16_000], silence_after=SILENCE_AFTER)
    assert short.features.shape == (80, 1400) and short.content_frames == 1400


def test_silence_after_a_long_chunk_spares_its_second_window(
    chunks: list[np.ndarray], transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With faster-whisper's padding, the sample's first chunk leaves its last sentence
    ("The car made a strange noise on the way to work.") to a second 30-s window; with
    silence after it, the model finishes the sentence in the first."""
    whisper = transcriber.model("tiny.en")
    first = chunks[0]
    assert len(first) >= SILENCE_AFTER * 16_000
    rounds = counting_rounds(monkeypatch)
    (padded,), _ = decode_batch(whisper, [first], language="en", beam_size=5, silence_after=None)
    assert len(rounds) == 2  # the second window
    rounds.clear()
    (silent,), _ = decode_batch(whisper, [first], language="en", beam_size=5)
    assert len(rounds) == 1
    for segments in (padded, silent):
        assert segments[-1].text.strip() == "The car made a strange noise on the way to work."
        assert segments[-1].end <= len(first) / 16_000 + 0.5
    assert " ".join(s.text for s in silent) == " ".join(s.text for s in padded)


def test_a_short_chunk_keeps_faster_whispers_padding(
    chunks: list[np.ndarray], transcriber: Transcriber
) -> None:
    """Under SILENCE_AFTER seconds (JFK's 11 s), a window is padded as faster-whisper
    pads it: the same segments, to the hundredth of a second, either way."""
    whisper = transcriber.model("tiny.en")
    jfk = chunks[-1]
    assert len(jfk) < SILENCE_AFTER * 16_000
    (default,), _ = decode_batch(whisper, [jfk], language="en", beam_size=5)
    (padded,), _ = decode_batch(whisper, [jfk], language="en", beam_size=5, silence_after=None)
    assert texts_and_times(default) == texts_and_times(padded)
    assert "ask not what your country can do for you" in " ".join(s.text for s in default)


def test_a_batch_stops_between_windows_when_asked(
    chunks: list[np.ndarray], transcriber: Transcriber
) -> None:
    asked: list[int] = []

    def stop_after_the_first_round() -> bool:
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(Stopped):
        transcriber.transcribe_batch(
            [chunks[0], chunks[3]],  # the second round: the 40-s chunk's second window
            model="tiny.en",
            options=DecodeOptions(beam_size=5),
            should_stop=stop_after_the_first_round,
        )
    assert len(asked) == 2
