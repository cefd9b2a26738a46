"""Speech detection from a model (whisperfarm/speech.py) and what the farm does with it: the
cutter cuts where the model hears no speech, sends no chunk without speech, and records
each chunk's speech spans; the transcript drops words placed where nobody speaks.

The model tests run the real Silero VAD that faster-whisper ships, on a real recording
(samples/real/fw-jfk.flac) and on music and street noise generated here. The cutter's
decisions are also tested with a scripted detector, whose verdicts are known exactly."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import REPO
from whisperfarm import chunk_limits, speech
from whisperfarm.assembly import assemble
from whisperfarm.chunking import CutterConfig, cut, has_speech
from whisperfarm.errors import ModelError
from whisperfarm.farm import cutter_config
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from whisperfarm.media import Decoder
from whisperfarm.settings import load_settings
from whisperfarm.speech import WINDOW, SpeechConfig, SpeechDetector, keep_spoken
from whisperfarm.transcripts import Segment, Word

RATE = 16_000
JFK = REPO / "samples" / "real" / "fw-jfk.flac"


# Audio ------------------------------------------------------------------------------------


def level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) + 1e-9
    return audio * (10 ** (dbfs / 20) / rms)


def pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(audio * 32768.0, -32768, 32767).astype(np.int16)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords, a bass line, a kick and hi-hats at -20 dBFS: as loud as speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    beat = int(0.5 * RATE)
    t = np.arange(2 * beat) / RATE
    for bar, at in enumerate(range(0, n, 4 * beat)):
        root = (60, 55, 57, 53)[bar % 4]
        for pitch in (root, root + 4, root + 7, root - 24):
            freq = 440.0 * 2 ** ((pitch - 69) / 12)
            tone = sum(np.sin(2 * np.pi * freq * k * t) / k**1.5 for k in range(1, 5))
            for b in range(0, 4 * beat, 2 * beat):
                piece = (tone * np.exp(-2.0 * t))[: max(0, n - at - b)]
                out[at + b : at + b + len(piece)] += piece
        for b in range(4):
            i = at + b * beat
            kick = np.sin(2 * np.pi * 55 * t[:2400]) * np.exp(-30 * t[:2400]) * 4
            out[i : i + 2400] += kick[: max(0, n - i)]
            hat = rng.standard_normal(600) * np.exp(-120 * t[:600])
            j = i + beat // 2
            out[j : j + 600] += hat[: max(0, n - j)]
    return pcm(level(out, -20.0))


def street(seconds: float, seed: int = 0) -> np.ndarray:
    """Traffic: low-passed noise swelling as cars pass, and a distant two-tone horn."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / RATE) > 400] *= 0.05
    rumble = np.fft.irfft(spectrum, n)
    t = np.arange(n) / RATE
    swells = 0.3 + sum(
        np.exp(-(((t - rng.uniform(0, seconds)) / 2.5) ** 2)) for _ in range(int(seconds / 5))
    )
    horn = np.zeros(n)
    at = int(seconds / 2 * RATE)
    tt = np.arange(int(0.6 * RATE)) / RATE
    horn[at : at + len(tt)] = np.sign(np.sin(2 * np.pi * 392 * tt)) + np.sign(
        np.sin(2 * np.pi * 494 * tt)
    )
    return pcm(level(rumble * swells, -25.0) + level(horn, -40.0))


def jfk() -> np.ndarray:
    decoder = Decoder(JFK)
    audio = np.concatenate(list(decoder.blocks()))
    decoder.close()
    return audio


def blocks_of(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


class Scripted:
    """A detector whose verdict is a function of time: ``speaking(seconds) -> bool``."""

    def __init__(self, speaking: Callable[[float], bool]):
        self.speaking = speaking
        self.heard = 0  # samples fed
        self.windows = 0  # windows answered

    def _answer(self, count: int) -> np.ndarray:
        times = (self.windows + np.arange(count) + 0.5) * WINDOW / RATE
        self.windows += count
        return np.array([0.9 if self.speaking(t) else 0.05 for t in times], np.float32)

    def feed(self, block: np.ndarray) -> np.ndarray:
        self.heard += len(block)
        return self._answer(self.heard // WINDOW - self.windows)

    def flush(self) -> np.ndarray:
        return self._answer(-(-self.heard // WINDOW) - self.windows)


def plans(audio: np.ndarray, detector: object, **config: float) -> list[ChunkPlan]:
    return [plan for plan, _ in cut(blocks_of(audio, RATE * 10), CutterConfig(**config), detector)]  # type: ignore[arg-type]


# The model ---------------------------------------------------------------------------------


def test_the_model_hears_the_speech_and_not_music_or_street_noise() -> None:
    detector = SpeechDetector()
    probs = detector.feed(np.concatenate([music(20.0), jfk(), street(20.0)]))
    per_second = RATE / WINDOW
    in_music = probs[: int(20 * per_second)]
    in_speech = probs[int(21 * per_second) : int(30 * per_second)]
    in_street = probs[int(32 * per_second) :]
    assert in_music.max() < 0.5 and in_street.max() < 0.5
    voiced, _ = speech.speech_mask(in_speech, SpeechConfig())
    assert voiced.mean() > 0.5  # JFK pauses between phrases


def test_the_model_gives_the_same_probabilities_whatever_the_block_sizes() -> None:
    audio = np.concatenate([music(5.0), jfk()])
    whole = SpeechDetector()
    expected = np.concatenate([whole.feed(audio), whole.flush()])
    assert len(expected) == -(-len(audio) // WINDOW)
    for size in (1, 511, 513, 4_999, 160_000):
        detector = SpeechDetector()
        got = np.concatenate(
            [*(detector.feed(b) for b in blocks_of(audio, size)), detector.flush()]
        )
        np.testing.assert_array_equal(got, expected, err_msg=f"blocks of {size}")


def test_speech_starts_at_threshold_and_ends_under_the_lower_one() -> None:
    config = SpeechConfig(threshold=0.5, neg_threshold=0.35)
    probs = np.array([0.2, 0.6, 0.4, 0.36, 0.3, 0.45, 0.55, 0.4])
    mask, on = speech.speech_mask(probs, config)
    assert mask.tolist() == [False, True, True, True, False, False, True, True]
    assert on
    carried, _ = speech.speech_mask(np.array([0.4, 0.2]), config, on=True)
    assert carried.tolist() == [True, False]


def test_spans_are_padded_merged_and_placed_on_the_timeline() -> None:
    seconds = WINDOW / RATE
    mask = np.zeros(14, dtype=bool)
    mask[[1, 2, 12]] = True
    # runs at windows 101-102 and 112 of the stream, 9 windows (0.288 s) apart
    assert speech.spans(mask, 100, SpeechConfig(pad=0.1)) == [
        pytest.approx((101 * seconds - 0.1, 103 * seconds + 0.1)),
        pytest.approx((112 * seconds - 0.1, 113 * seconds + 0.1)),
    ]
    assert speech.spans(mask, 100, SpeechConfig(pad=0.15)) == [
        pytest.approx((101 * seconds - 0.15, 113 * seconds + 0.15))
    ]
    assert speech.spans(mask, 0, SpeechConfig(pad=0.1))[0][0] == 0.0  # not before the start


# Cutting -----------------------------------------------------------------------------------


def test_chunks_of_music_and_street_noise_are_not_sent() -> None:
    audio = np.concatenate([music(45.0), street(45.0)])
    found = plans(audio, None)
    assert len(found) >= 3
    assert not any(plan.speech for plan in found)
    assert all(plan.speech_spans == () for plan in found)
    # What the loudness test alone says about the same audio: it sounds like speech.
    assert has_speech(audio[: 20 * RATE], CutterConfig().silence_dbfs)
    loud = [plan for plan, _ in cut(blocks_of(audio, RATE * 10), CutterConfig(speech=None))]
    assert all(plan.speech for plan in loud)


def test_speech_between_music_is_sent_with_its_spans_and_the_music_is_not() -> None:
    speech_audio = jfk()
    audio = np.concatenate([music(30.0, seed=1), speech_audio, music(30.0, seed=2)])
    talk_start, talk_end = 30.0, 30.0 + len(speech_audio) / RATE
    found = plans(audio, None)
    sent = [plan for plan in found if plan.speech]
    assert sent, found
    for plan in found:
        holds_speech = plan.start < talk_end - 1.0 and plan.end > talk_start + 1.0
        assert plan.speech == holds_speech, plan
    spans = [span for plan in sent for span in plan.speech_spans or ()]
    assert min(a for a, _ in spans) >= talk_start - 0.5
    assert max(b for _, b in spans) <= talk_end + 0.5
    assert sum(b - a for a, b in spans) > 6.0


def test_cuts_fall_in_pauses_the_model_hears_where_loudness_finds_none() -> None:
    """Speech over a music bed: loud all along, so by loudness there is no pause and every
    seam would be overlapped. The model hears a pause between sentences."""
    pauses = [(a, a + 0.8) for a in np.arange(4.0, 200.0, 5.5)]

    def speaking(t: float) -> bool:
        return not any(a <= t < b for a, b in pauses)

    audio = pcm(level(np.random.default_rng(3).standard_normal(int(120 * RATE)), -20.0))
    found = plans(audio, Scripted(speaking))
    assert len(found) >= 4
    for left, right in itertools.pairwise(found):
        assert not left.overlaps and not right.overlaps
        assert any(a < left.keep_end < b for a, b in pauses), left
        assert left.keep_end - left.keep_start >= CutterConfig().min_seconds
    assert all(plan.speech for plan in found)


def test_ordinary_pauses_are_cut_where_loudness_cuts_them() -> None:
    """Between sentences the model only confirms what loudness hears, and where a cut lands
    within a pause changes what Whisper writes at the chunk's end: the seams bench lost a
    sentence when the model moved one cut 0.3 s. So the cuts stay where they were."""
    rng = np.random.default_rng(8)
    parts, talking, t = [], [], 0.0
    while t < 150.0:
        speech_s, pause_s = rng.uniform(2.0, 6.0), rng.uniform(0.6, 1.2)
        parts += [level(rng.standard_normal(int(speech_s * RATE)), -20.0)]
        parts += [level(rng.standard_normal(int(pause_s * RATE)), -60.0)]
        talking.append((t - 0.1, t + speech_s + 0.15))  # the model's edges differ a little
        t += speech_s + pause_s
    audio = pcm(np.concatenate(parts))
    with_model = plans(audio, Scripted(lambda x: any(a <= x < b for a, b in talking)))
    by_loudness = [p for p, _ in cut(blocks_of(audio, RATE * 10), CutterConfig(speech=None))]
    assert len(with_model) >= 5
    assert [(p.start, p.end) for p in with_model] == [(p.start, p.end) for p in by_loudness]


def test_a_long_stretch_without_speech_is_cut_off_where_speech_ends() -> None:
    """Speech for 15 s, then 60 s of noise: the chunk ends just after the speech (not 27 s
    in, with 12 s of noise for Whisper to invent text in), and the noise goes unsent."""
    audio = pcm(level(np.random.default_rng(4).standard_normal(75 * RATE), -20.0))
    found = plans(audio, Scripted(lambda t: t < 15.0))
    pad = SpeechConfig().pad
    assert found[0].keep_end == pytest.approx(15.0 + pad, abs=0.05)
    assert found[0].speech
    assert not any(plan.speech for plan in found[1:])


def test_a_chunk_that_has_heard_no_speech_yet_ends_just_before_speech_begins() -> None:
    audio = pcm(level(np.random.default_rng(5).standard_normal(60 * RATE), -20.0))
    found = plans(audio, Scripted(lambda t: 22.0 <= t < 40.0))
    pad = SpeechConfig().pad
    assert found[0].keep_end == pytest.approx(22.0 - pad, abs=0.05)
    assert not found[0].speech
    assert found[1].speech


def test_a_short_burst_is_not_speech_enough_to_send_a_chunk() -> None:
    audio = pcm(level(np.random.default_rng(6).standard_normal(20 * RATE), -20.0))
    burst = plans(audio, Scripted(lambda t: 10.0 <= t < 10.1))
    assert [plan.speech for plan in burst] == [False]
    talk = plans(audio, Scripted(lambda t: 10.0 <= t < 10.5))
    assert [plan.speech for plan in talk] == [True]


def test_same_plans_with_the_model_whatever_the_block_sizes() -> None:
    audio = np.concatenate([music(25.0), jfk(), street(25.0), jfk()])
    reference = [p for p, _ in cut([audio], CutterConfig())]
    assert len(reference) >= 3 and any(p.speech for p in reference)
    assert any(not p.speech for p in reference)  # the model's verdict, not loudness
    assert all(p.speech_spans is not None for p in reference)
    for size in (4_999, RATE, 10 * RATE):
        assert [p for p, _ in cut(blocks_of(audio, size), CutterConfig())] == reference, size


def test_a_two_hour_stream_with_the_model_is_cut_with_bounded_memory() -> None:
    """What the model has said is kept only for the audio the cutter still holds."""
    period = 5.0

    def speaking(t: float) -> bool:
        return t % period < 4.4

    detector = Scripted(speaking)
    block = pcm(level(np.random.default_rng(7).standard_normal(10 * RATE), -20.0))

    def stream() -> Iterator[np.ndarray]:
        for _ in range(2 * 3600 // 10):
            yield block

    count = 0
    tracemalloc.start()
    try:
        for plan, _ in cut(stream(), CutterConfig(), detector):  # type: ignore[arg-type]
            count += 1
            assert plan.speech and not plan.overlaps
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count >= 7200 / chunk_limits.MAX_SECONDS
    assert detector.heard == 7200 * RATE
    assert peak < 32 * 1024 * 1024


def test_without_the_model_plans_have_no_spans() -> None:
    audio = music(40.0)
    found = [p for p, _ in cut([audio], CutterConfig(speech=None))]
    assert all(p.speech_spans is None and p.speech for p in found)


# Which chunks need word times ---------------------------------------------------------------


def test_a_chunk_with_a_long_stretch_without_speech_asks_for_word_times() -> None:
    def plan(spans: tuple[tuple[float, float], ...] | None) -> ChunkPlan:
        return ChunkPlan(0, 10.0, 30.0, 10.0, 30.0, speech_spans=spans)

    assert not plan(None).needs_words
    assert not plan(((10.0, 19.0), (20.5, 30.0))).needs_words
    assert plan(((10.0, 17.0), (20.5, 30.0))).needs_words  # 3.5 s gap
    assert plan(((10.0, 20.0),)).needs_words  # 10 s without speech at the end
    assert plan(((15.0, 30.0),)).needs_words  # 5 s at the start
    assert ChunkPlan(0, 10.0, 30.0, 12.0, 30.0).needs_words  # overlapped


# Dropping words placed where nobody speaks ---------------------------------------------------


def words(*items: tuple[float, float, str]) -> list[Word]:
    return [Word(a, b, f" {text}", 0.9) for a, b, text in items]


def test_keep_spoken_drops_words_away_from_speech() -> None:
    found = [(10.0, 20.0), (40.0, 50.0)]
    invented = Segment(0.0, 3.0, "Thank you.", words((0.0, 1.0, "Thank"), (1.0, 3.0, "you.")))
    mixed = Segment(
        18.0,
        25.0,
        "the end. Thanks",
        words((18.0, 19.0, "the"), (19.0, 20.5, "end."), (23.0, 25.0, "Thanks")),
    )
    kept = Segment(41.0, 42.0, "Hello", words((41.0, 42.0, "Hello")))
    out = keep_spoken([invented, mixed, kept], found)
    assert [s.text for s in out] == ["the end.", "Hello"]
    assert (out[0].start, out[0].end) == (18.0, 20.5)
    assert out[1] is kept


def test_keep_spoken_keeps_words_whisper_times_loosely_next_to_speech() -> None:
    """Whisper stretches "ask" over the pause before it, and puts a sentence's last word,
    zero seconds long, a little after the speech ends."""
    found = [(60.0, 62.4), (63.1, 64.6)]
    ask = Segment(
        61.0,
        64.4,
        "Americans ask not",
        words((61.0, 62.1, "Americans"), (62.1, 63.7, "ask"), (63.7, 64.4, "not")),
    )
    middle = Segment(64.0, 65.3, "the middle.", words((64.0, 64.5, "the"), (65.3, 65.3, "middle.")))
    assert keep_spoken([ask, middle], found) == [ask, middle]
    late = Segment(66.0, 66.2, "Bye.", words((66.0, 66.2, "Bye.")))
    assert keep_spoken([late], found) == []


def test_keep_spoken_judges_segments_without_words_by_their_span() -> None:
    found = [(10.0, 20.0)]
    inside = Segment(12.0, 14.0, "spoken")
    outside = Segment(25.0, 28.0, "invented")
    assert keep_spoken([inside, outside], found) == [inside]
    assert keep_spoken([inside, outside], None) == [inside, outside]


def test_the_transcript_leaves_out_words_placed_where_the_model_heard_no_speech(
    home: Path,
) -> None:
    """End to end through the ledger: chunk plans with their speech spans, results as a
    worker posts them, the transcript as the farm writes it."""
    ledger = Ledger(home / "ledger.db")
    try:
        episode = ledger.create_episode(
            episode_id="ep",
            name="show",
            source="/audio/show.mp3",
            content_hash="h",
            model="tiny.en",
            options={"word_timestamps": True},
        )
        first = ChunkPlan(0, 0.0, 20.0, 0.0, 20.0, speech_spans=((12.0, 20.0),))
        second = ChunkPlan(1, 20.0, 40.0, 20.0, 40.0, speech_spans=((20.0, 31.0),))
        for plan in (first, second):
            ledger.add_chunk("ep", plan, f"/c/{plan.idx}.wav")
        results = [
            [  # "Thank you." over the intro's music, then speech
                {
                    "start": 0.0,
                    "end": 2.0,
                    "text": " Thank you.",
                    "words": [
                        {"start": 0.0, "end": 1.0, "word": " Thank", "probability": 0.4},
                        {"start": 1.0, "end": 2.0, "word": " you.", "probability": 0.4},
                    ],
                },
                {
                    "start": 12.5,
                    "end": 14.0,
                    "text": " Welcome back.",
                    "words": [
                        {"start": 12.5, "end": 13.2, "word": " Welcome", "probability": 0.9},
                        {"start": 13.2, "end": 14.0, "word": " back.", "probability": 0.9},
                    ],
                },
            ],
            [  # speech, then an invented loop over the street noise
                {
                    "start": 0.0,
                    "end": 10.0,
                    "text": " Here we go.",
                    "words": [
                        {"start": 0.5, "end": 1.0, "word": " Here", "probability": 0.9},
                        {"start": 1.0, "end": 1.5, "word": " we", "probability": 0.9},
                        {"start": 1.5, "end": 2.0, "word": " go.", "probability": 0.9},
                    ],
                },
                {
                    "start": 14.0,
                    "end": 18.0,
                    "text": " Okay. Okay.",
                    "words": [
                        {"start": 14.0, "end": 15.0, "word": " Okay.", "probability": 0.3},
                        {"start": 16.0, "end": 17.0, "word": " Okay.", "probability": 0.3},
                    ],
                },
            ],
        ]
        for segments in results:
            claim = ledger.claim(["ep"], WorkerInfo("w"), lease_seconds=60, max_attempts=3)
            assert claim.job is not None
            body = json.dumps({"segments": segments, "language": "en"})
            ledger.complete(claim.job.chunk_id, claim.job.lease_token, result=body)
        assert [json.loads(c["speech_spans"] or "null") for c in ledger.chunks("ep")] == [
            [[12.0, 20.0]],
            [[20.0, 31.0]],
        ]
        transcript = assemble(ledger, ledger.episode("ep") or episode, keep_words=False)
    finally:
        ledger.close()
    assert transcript.text == "Welcome back. Here we go."
    assert all(segment.words is None for segment in transcript.segments)


# Settings -----------------------------------------------------------------------------------


def test_the_speech_model_is_on_by_default_and_the_vad_setting_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cutter_config(load_settings()).speech == SpeechConfig()
    monkeypatch.setenv("WHISPERFARM_VAD", "false")
    assert cutter_config(load_settings()).speech is None


def test_a_missing_speech_model_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "MODEL_FILE", "silero_vad_v0.onnx")
    with pytest.raises(ModelError, match=r"faster-whisper>=1.2.1.*WHISPERFARM_VAD=false"):
        speech.model_path()
