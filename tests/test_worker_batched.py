"""The batched decode (worker.batched) against the sequential one it stands for, with the
real tiny.en on real speech: chunks decoded together read as each decoded alone, the
ones that take a second window included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import worker.batched
from whisperfarm.chunking import CutterConfig, cut
from whisperfarm.media import Decoder
from worker.batched import Stopped
from worker.models import bundled_tiny_en
from worker.transcriber import Transcriber
from worker.wire import DecodeOptions

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def speech(path: Path) -> np.ndarray:
    decoder = Decoder(path)
    try:
        return np.concatenate(list(decoder.blocks()))
    finally:
        decoder.close()


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    """The sample episode's first three chunks as the cutter cuts them (28.7, 27.4 and
    27.7 s), and JFK's 11 s: float32 as the worker decodes them."""
    cut_chunks = [audio for _, audio in cut([speech(SAMPLES / "episode.mp3")], CutterConfig())]
    picked = [*cut_chunks[:3], speech(SAMPLES / "real" / "fw-jfk.flac")]
    return [audio.astype(np.float32) / 32768.0 for audio in picked]


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    assert bundled_tiny_en() is not None, "the tiny.en model package is a dev dependency"
    return Transcriber(threads=2)


def test_a_batch_reads_as_each_chunk_decoded_alone(
    chunks: list[np.ndarray], transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []
    real_round = worker.batched._round

    def counting(whisper: object, tokenizer: object, options: object, going: list) -> None:
        rounds.append(len(going))
        real_round(whisper, tokenizer, options, going)

    monkeypatch.setattr(worker.batched, "_round", counting)
    english = DecodeOptions(language="en", beam_size=5)
    batched = transcriber.transcribe_batch(chunks, model="tiny.en", options=english)
    alone = [transcriber.transcribe(audio, model="tiny.en", options=english) for audio in chunks]
    assert rounds[0] == len(chunks)  # one encode and one generate for every first window
    assert len(rounds) > 1, "no chunk took a second window: the test lost its point"
    for together, single, audio in zip(batched, alone, chunks, strict=True):
        assert [s.text for s in together.segments] == [s.text for s in single.segments]
        assert [(s.start, s.end) for s in together.segments] == [
            (s.start, s.end) for s in single.segments
        ]
        assert (together.model, together.language) == ("tiny.en", "en")
        assert together.duration == pytest.approx(len(audio) / 16_000)


def test_a_batch_stops_between_windows_when_asked(
    chunks: list[np.ndarray], transcriber: Transcriber
) -> None:
    asked: list[int] = []

    def stop_after_the_first_round() -> bool:
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(Stopped):
        transcriber.transcribe_batch(
            chunks[:2],
            model="tiny.en",
            options=DecodeOptions(beam_size=5),
            should_stop=stop_after_the_first_round,
        )
    assert len(asked) == 2
