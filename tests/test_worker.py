"""The worker loop against the real coordinator app in-process, with a fake transcriber;
the worker's configuration; and the client's retry policy over httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.clock import FakeClock
from tests.support.in_process import in_process
from tests.support.paths import REPO
from tests.support.results import result_object
from whisperfarm.chunk_audio import chunk_path, write_chunk
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.evaluation import word_error_rate
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from whisperfarm.media import Decoder
from worker.audio import ChunkAudio, ChunkFormat
from worker.client import (
    CoordinatorClient,
    CoordinatorError,
    LeaseLostError,
    Unauthorized,
    Unreachable,
)
from worker.config import ConfigError, WorkerConfig
from worker.device import DEFAULT_BATCH_SIZE, Device
from worker.loop import EXIT_DONE, EXIT_MODEL, EXIT_STOPPED, Worker
from worker.models import ModelLoadError, bundled_tiny_en
from worker.transcriber import DEFAULTS, Stopped, Transcriber
from worker.wire import ClaimReply, DecodeOptions, Lease, ResultModel, WorkerModel

TOKEN = "worker-test-token"
LEASE = 60.0
MAX_ATTEMPTS = 3
LENGTHS = [3.0, 2.0, 1.0]  # claimed in this order: longest first
JFK = Path(__file__).resolve().parents[1] / "samples" / "real" / "fw-jfk.flac"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


class StepClock:
    """The worker's busy-time clock, moved by the fake transcriber."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    audio: np.ndarray
    model: str
    job: DecodeOptions

    @property
    def language(self) -> str | None:
        return self.job.language

    @property
    def beam_size(self) -> int:
        return self.job.beam_size

    @property
    def word_timestamps(self) -> bool:
        return self.job.word_timestamps


@dataclass
class FakeTranscriber(Transcriber):
    """A Transcriber that loads no model (its ``__init__`` is the dataclass's), so mypy
    holds ``transcribe`` to the real signature; ``behave`` decides what each call does
    (return a result or raise)."""

    behave: Callable[[int, Callable[[], bool]], ResultModel] | None = None
    calls: list[Call] = field(default_factory=list)

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        model: str,
        options: DecodeOptions = DEFAULTS,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ResultModel:
        self.calls.append(Call(audio, model, options))
        if self.behave is not None:
            return self.behave(len(self.calls), should_stop)
        return result_for(audio)


def result_for(audio: np.ndarray, text: str | None = None) -> ResultModel:
    seconds = len(audio) / 16_000
    return ResultModel.model_validate(
        {
            "segments": [{"start": 0.0, "end": seconds, "text": text or f" {seconds:.1f} seconds"}],
            "language": "en",
            "duration": seconds,
            "model": "tiny.en",  # the episode's, as a real transcriber reports it
        }
    )


@dataclass
class Setup:
    ledger: Ledger
    app_client: httpx.Client
    client: CoordinatorClient
    samples: dict[int, np.ndarray]  # idx -> int16 samples
    clock: Any

    def worker(self, transcriber: FakeTranscriber, clock: StepClock | None = None) -> Worker:
        return Worker(
            self.client, transcriber, WorkerModel(id="w1", kind="local"), clock=clock or StepClock()
        )

    def states(self) -> list[tuple[int, str, int]]:
        return [(c["idx"], c["state"], c["attempt"]) for c in self.ledger.chunks("ep1")]


@pytest.fixture
def setup(tmp_path: Path, home: Path, ledger: Ledger, clock: FakeClock) -> Iterator[Setup]:
    with make_setup(tmp_path, home, ledger, clock, ChunkFormat.WAV) as made:
        yield made


@pytest.fixture
def opus_setup(tmp_path: Path, home: Path, ledger: Ledger, clock: FakeClock) -> Iterator[Setup]:
    tones = [  # what a lossy codec keeps: voice-band tones, not a sawtooth's overtones
        (
            np.sin(np.arange(int(length * 16_000)) * 2 * np.pi * 220 * (idx + 1) / 16_000) * 8000
        ).astype(np.int16)
        for idx, length in enumerate(LENGTHS)
    ]
    with make_setup(tmp_path, home, ledger, clock, ChunkFormat.OPUS, chunks=tones) as made:
        yield made


@contextmanager
def make_setup(
    tmp_path: Path,
    home: Path,
    ledger: Ledger,
    clock: FakeClock,
    chunk_format: ChunkFormat,
    chunks: list[np.ndarray] | None = None,
) -> Iterator[Setup]:
    """The (empty) ``ledger`` given one episode whose chunks (``chunks``, else three of
    LENGTHS seconds) are written in ``chunk_format``, and a client of its coordinator,
    in-process."""
    ledger.create_episode(
        episode_id="ep1",
        name="show",
        source="/src/show.mp3",
        content_hash="h",
        model="tiny.en",
        options={"language": "en", "beam_size": 2},
    )
    if chunks is None:
        chunks = [
            ((np.arange(int(length * 16_000)) * (idx + 3)) % 2000 - 1000).astype(np.int16)
            for idx, length in enumerate(LENGTHS)
        ]
    samples, t = {}, 0.0
    for idx, audio in enumerate(chunks):
        length = len(audio) / 16_000
        file = chunk_path(tmp_path / "chunks", idx, chunk_format)
        write_chunk(file, audio, chunk_format)
        ledger.add_chunk("ep1", ChunkPlan(idx, t, t + length, t, t + length), str(file))
        samples[idx] = audio
        t += length
    ledger.finish_chunking("ep1", duration=t, chunk_count=len(LENGTHS))
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=tmp_path / "home" / "episodes",
        lease_seconds=LEASE,
        max_attempts=MAX_ATTEMPTS,
        clock=clock,
    )
    app_client = in_process(TestClient(create_app(config)))
    client = CoordinatorClient("http://unused", TOKEN, http=app_client, sleep=lambda _: None)
    try:
        yield Setup(ledger, app_client, client, samples, clock)
    finally:
        client.close()
        config.close()


# The loop -----------------------------------------------------------------------------------


def test_worker_completes_every_chunk_and_exits_when_done(setup: Setup) -> None:
    clock = StepClock()

    def work(n: int, _: Callable[[], bool]) -> ResultModel:
        clock.now += 2.5  # busy time the worker reports
        return result_for(transcriber.calls[-1].audio)

    transcriber = FakeTranscriber(work)
    worker = setup.worker(transcriber, clock)

    assert worker.run() == EXIT_DONE
    assert worker.chunks_done == 3
    assert setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]
    for call, idx in zip(transcriber.calls, [0, 1, 2], strict=True):
        np.testing.assert_array_equal(call.audio, setup.samples[idx] / np.float32(32768))
        assert (call.model, call.language, call.beam_size, call.word_timestamps) == (
            "tiny.en",
            "en",
            2,
            False,
        )
    for chunk in setup.ledger.chunks("ep1"):
        stored = result_object(setup.ledger.result(chunk["id"]))
        assert stored["segments"][0]["end"] == LENGTHS[chunk["idx"]]
    (row,) = setup.ledger.workers()
    assert (row["id"], row["kind"], row["chunks_done"]) == ("w1", "local", 3)
    assert row["busy_seconds"] == pytest.approx(7.5)
    assert row["audio_seconds"] == pytest.approx(sum(LENGTHS))


def test_a_transcriber_error_is_reported_and_the_chunk_retried(setup: Setup) -> None:
    def flaky(n: int, _: Callable[[], bool]) -> ResultModel:
        if n == 1:
            raise RuntimeError("decoder exploded")
        return result_for(transcriber.calls[-1].audio)

    transcriber = FakeTranscriber(flaky)
    assert setup.worker(transcriber).run() == EXIT_DONE

    # the first chunk failed once, went back to the queue, and was done on attempt 2
    assert setup.states() == [(0, "done", 2), (1, "done", 1), (2, "done", 1)]
    assert len(transcriber.calls) == 4
    assert setup.ledger.chunks("ep1")[0]["error"] is None


def test_a_chunk_that_always_fails_goes_dead_and_the_worker_carries_on(setup: Setup) -> None:
    def bad_first_chunk(n: int, _: Callable[[], bool]) -> ResultModel:
        audio = transcriber.calls[-1].audio
        if len(audio) == len(setup.samples[0]):
            raise ValueError("cannot decode this one")
        return result_for(audio)

    transcriber = FakeTranscriber(bad_first_chunk)
    worker = setup.worker(transcriber)
    assert worker.run() == EXIT_DONE

    assert setup.states() == [(0, "dead", MAX_ATTEMPTS), (1, "done", 1), (2, "done", 1)]
    assert setup.ledger.chunks("ep1")[0]["error"] == "ValueError: cannot decode this one"
    assert worker.chunks_done == 2


def test_the_worker_decodes_opus_chunks_to_what_the_cutter_cut(opus_setup: Setup) -> None:
    transcriber = FakeTranscriber()
    assert opus_setup.worker(transcriber).run() == EXIT_DONE

    assert opus_setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]
    for call, idx in zip(transcriber.calls, [0, 1, 2], strict=True):
        expected = opus_setup.samples[idx] / np.float32(32768)
        assert call.audio.dtype == np.float32
        assert len(call.audio) == len(expected)
        assert np.corrcoef(call.audio, expected)[0, 1] > 0.9


def test_a_corrupt_opus_chunk_fails_with_a_clear_reason_and_the_worker_carries_on(
    opus_setup: Setup,
) -> None:
    first = opus_setup.ledger.chunks("ep1")[0]
    data = Path(first["audio_path"]).read_bytes()
    Path(first["audio_path"]).write_bytes(data[:40] + b"\x00garbage" * 50)

    transcriber = FakeTranscriber()
    worker = opus_setup.worker(transcriber)
    assert worker.run() == EXIT_DONE

    assert opus_setup.states() == [(0, "dead", MAX_ATTEMPTS), (1, "done", 1), (2, "done", 1)]
    error = opus_setup.ledger.chunks("ep1")[0]["error"]
    assert error is not None and error.startswith(
        "AudioError: chunk audio (audio/ogg) is corrupt"
    ), error
    assert len(transcriber.calls) == 2  # the corrupt chunk never reached the model


def test_a_worker_transcribes_an_opus_chunk_with_the_real_model(
    tmp_path: Path, home: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """JFK's 11 s, cut to an Opus chunk by the real ffmpeg, served by the coordinator,
    decoded by the worker and transcribed by the real tiny.en."""
    assert bundled_tiny_en() is not None, "the tiny.en model package is a dev dependency"
    decoder = Decoder(JFK)
    samples = np.concatenate(list(decoder.blocks()))
    decoder.close()
    with make_setup(tmp_path, home, ledger, clock, ChunkFormat.OPUS, chunks=[samples]) as farm:
        worker = Worker(farm.client, Transcriber(threads=1), WorkerModel(id="w1", kind="local"))
        assert worker.run() == EXIT_DONE

        (chunk,) = farm.ledger.chunks("ep1")
        assert chunk["audio_path"].endswith(".opus")
        result = result_object(farm.ledger.result(chunk["id"]))
    text = " ".join(s["text"] for s in result["segments"])
    assert word_error_rate(JFK_TEXT, text) == 0.0, text


def test_a_model_this_worker_cannot_load_fails_one_job_with_the_reason_and_leaves(
    setup: Setup,
) -> None:
    """One attempt of one chunk, not every chunk of the farm: a worker that stayed failed
    the whole queue dead faster than healthy workers could finish it."""
    reason = "model 'tiny.en' is not available on this worker (no hub): bake it into the image"

    def no_model(n: int, _: Callable[[], bool]) -> ResultModel:
        raise ModelLoadError(reason)

    transcriber = FakeTranscriber(no_model)
    worker = setup.worker(transcriber)
    assert worker.run() == EXIT_MODEL
    assert len(transcriber.calls) == 1
    assert setup.states()[0] == (0, "queued", 1)
    assert setup.states()[1:] == [(idx, "queued", 0) for idx in range(1, len(LENGTHS))]
    assert setup.ledger.chunks("ep1")[0]["error"] == reason
    assert worker.chunks_done == 0


def test_stop_mid_transcription_releases_the_chunk_without_spending_an_attempt(
    setup: Setup,
) -> None:
    def interrupted(n: int, should_stop: Callable[[], bool]) -> ResultModel:
        assert should_stop() is False
        worker.request_stop()  # SIGTERM arrives between two segments
        if should_stop():
            raise Stopped()
        raise AssertionError("should_stop did not see the stop request")

    transcriber = FakeTranscriber(interrupted)
    worker = setup.worker(transcriber)

    assert worker.run() == EXIT_STOPPED
    assert len(transcriber.calls) == 1
    assert setup.states() == [(0, "queued", 0), (1, "queued", 0), (2, "queued", 0)]
    chunk = setup.ledger.chunks("ep1")[0]
    assert chunk["lease_token"] is None
    assert setup.ledger.workers()[0]["current_chunk"] is None
    assert worker.chunks_done == 0


def test_a_stop_request_lets_the_current_chunk_finish_then_exits(setup: Setup) -> None:
    def finish_anyway(n: int, _: Callable[[], bool]) -> ResultModel:
        worker.request_stop()
        return result_for(transcriber.calls[-1].audio)

    transcriber = FakeTranscriber(finish_anyway)
    worker = setup.worker(transcriber)
    assert worker.run() == EXIT_STOPPED
    assert setup.states() == [(0, "done", 1), (1, "queued", 0), (2, "queued", 0)]
    assert worker.chunks_done == 1


def test_a_worker_stopped_before_it_starts_claims_nothing(setup: Setup) -> None:
    transcriber = FakeTranscriber()
    worker = setup.worker(transcriber)
    worker.request_stop()
    assert worker.run() == EXIT_STOPPED
    assert transcriber.calls == []
    assert setup.ledger.workers() == []


def test_lease_lost_result_is_refused_and_the_worker_carries_on(setup: Setup) -> None:
    ledger = setup.ledger
    clock = setup.clock

    def slow_first_chunk(n: int, _: Callable[[], bool]) -> ResultModel:
        audio = transcriber.calls[-1].audio
        if n == 1:
            # too slow: the lease expires, another worker takes the chunk and finishes it
            clock.advance(LEASE + 1)
            claim = ledger.claim(
                ["ep1"], WorkerInfo("thief"), lease_seconds=LEASE, max_attempts=MAX_ATTEMPTS
            ).job
            assert claim is not None and claim.idx == 0 and claim.attempt == 2
            ledger.complete(claim.chunk_id, claim.lease_token, result='"/thief.json"')
        return result_for(audio)

    transcriber = FakeTranscriber(slow_first_chunk)
    worker = setup.worker(transcriber)

    assert worker.run() == EXIT_DONE
    assert worker.chunks_done == 2
    assert setup.states() == [(0, "done", 2), (1, "done", 1), (2, "done", 1)]
    first = ledger.chunks("ep1")[0]
    assert ledger.result(first["id"]) == "/thief.json"  # the refused result stored nothing
    assert first["worker_id"] == "thief"
    assert {w["id"]: w["chunks_done"] for w in ledger.workers()} == {"w1": 2, "thief": 1}


def test_audio_gone_with_the_lease_is_dropped_without_transcribing(setup: Setup) -> None:
    """If the lease is lost before the audio download, the worker drops the job (no
    failure reported, no attempt spent by it) and goes on."""
    job = setup.client.claim(WorkerModel(id="w1")).job
    assert job is not None
    setup.clock.advance(LEASE + 1)
    thief = setup.ledger.claim(
        ["ep1"], WorkerInfo("thief"), lease_seconds=LEASE, max_attempts=MAX_ATTEMPTS
    ).job
    assert thief is not None and thief.chunk_id == job.chunk_id

    transcriber = FakeTranscriber()
    setup.worker(transcriber).run_job(job)

    assert transcriber.calls == []
    chunk = setup.ledger.chunk(job.chunk_id)
    assert (chunk["state"], chunk["lease_token"], chunk["error"]) == (
        "leased",
        thief.lease_token,
        None,
    )


# Batches and prefetch ---------------------------------------------------------------------

Behave = Callable[[int, list[np.ndarray], Callable[[], bool]], list[ResultModel]]


@dataclass
class BatchTranscriber(Transcriber):
    """A Transcriber that loads no model; ``behave`` decides what each batch call does."""

    behave: Behave | None = None
    batches: list[list[int]] = field(default_factory=list)  # each call's chunk lengths

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        *,
        model: str,
        options: DecodeOptions = DecodeOptions(),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ResultModel]:
        self.batches.append([len(audio) for audio in audios])
        if self.behave is not None:
            return self.behave(len(self.batches), audios, should_stop)
        return [result_for(audio) for audio in audios]

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        model: str,
        options: DecodeOptions = DecodeOptions(),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ResultModel:
        """One chunk: recorded as a batch of one."""
        (result,) = self.transcribe_batch([audio], model=model, should_stop=should_stop)
        return result


def batch_worker(setup: Setup, transcriber: Transcriber, **options: object) -> Worker:
    return Worker(
        setup.client,
        transcriber,
        WorkerModel(id="w1", kind="local"),
        clock=StepClock(),
        **options,  # type: ignore[arg-type]
    )


def samples(lengths: list[float]) -> list[int]:
    return [int(length * 16_000) for length in lengths]


def test_a_batch_is_claimed_at_once_and_decoded_in_one_call(setup: Setup) -> None:
    transcriber = BatchTranscriber()
    assert batch_worker(setup, transcriber, batch_size=2).run() == EXIT_DONE
    assert transcriber.batches == [samples(LENGTHS[:2]), samples(LENGTHS[2:])]
    assert setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]
    for chunk in setup.ledger.chunks("ep1"):
        stored = result_object(setup.ledger.result(chunk["id"]))
        assert stored["segments"][0]["end"] == LENGTHS[chunk["idx"]]
    (row,) = setup.ledger.workers()
    assert row["chunks_done"] == 3


def test_stop_mid_batch_releases_every_chunk_the_prefetched_ones_too(setup: Setup) -> None:
    def interrupted(n: int, audios: list[np.ndarray], should_stop: Callable[[], bool]) -> list:
        assert should_stop() is False
        running.request_stop()  # SIGTERM while the batch decodes
        if should_stop():
            raise Stopped()
        raise AssertionError("should_stop did not see the stop request")

    transcriber = BatchTranscriber(interrupted)
    running = batch_worker(setup, transcriber, batch_size=2, prefetch=True)
    assert running.run() == EXIT_STOPPED
    assert transcriber.batches == [samples(LENGTHS[:2])]
    # the two being decoded and the one prefetched: back in the queue, no attempt spent
    assert setup.states() == [(0, "queued", 0), (1, "queued", 0), (2, "queued", 0)]
    assert all(chunk["lease_token"] is None for chunk in setup.ledger.chunks("ep1"))
    assert running.chunks_done == 0


def test_prefetch_claims_the_next_batch_while_this_one_decodes(setup: Setup) -> None:
    seen: list[list[tuple[int, str]]] = []

    def look(n: int, audios: list[np.ndarray], _: Callable[[], bool]) -> list[ResultModel]:
        # the prefetch thread claims while the batch decodes: wait for it to have done so
        for _try in range(500):
            if n == 3 or any(s == "leased" for _, s, _ in setup.states()[n:]):
                break
            stop.wait(0.01)
        seen.append([(idx, state) for idx, state, _ in setup.states()])
        return [result_for(audio) for audio in audios]

    stop = threading.Event()
    transcriber = BatchTranscriber(look)
    assert batch_worker(setup, transcriber, batch_size=1, prefetch=True).run() == EXIT_DONE
    assert seen[0] == [(0, "leased"), (1, "leased"), (2, "queued")]
    assert seen[1] == [(0, "done"), (1, "leased"), (2, "leased")]
    assert setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]


class Waits(threading.Event):
    """The worker's stop flag, recording each wait for the coordinator's retry_after."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout)
        return super().wait(0)


def test_a_prefetched_wait_is_asked_again_at_once_when_the_batch_is_posted(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim made while the worker's last batch decodes is told "wait" (that batch's
    chunks are still leased). Once they are posted the run may be done and its coordinator
    gone within the retry_after: the worker asks again at once, and hears "done"."""
    claimed = threading.Event()
    real_claim = setup.client.claim

    def claim(*args: Any, **kwargs: Any) -> ClaimReply:
        reply = real_claim(*args, **kwargs)
        if reply.status == "wait":
            claimed.set()
        return reply

    monkeypatch.setattr(setup.client, "claim", claim)

    def after_the_prefetch(n: int, audios: list[np.ndarray], _: Callable[[], bool]) -> list:
        assert claimed.wait(10), "the prefetch claim never came"
        return [result_for(audio) for audio in audios]

    running = batch_worker(setup, BatchTranscriber(after_the_prefetch), batch_size=3, prefetch=True)
    running.stopping = waits = Waits()
    assert running.run() == EXIT_DONE
    assert waits.waited == []
    assert setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]


def test_a_lease_lost_in_a_batch_drops_that_chunk_and_posts_the_others(setup: Setup) -> None:
    clock: FakeClock = setup.clock

    def slow(n: int, audios: list[np.ndarray], _: Callable[[], bool]) -> list[ResultModel]:
        if n == 1:  # too slow: every lease expires, a thief takes the longest chunk
            clock.advance(LEASE + 1)
            thief = setup.ledger.claim(
                ["ep1"], WorkerInfo("thief"), lease_seconds=LEASE, max_attempts=MAX_ATTEMPTS
            ).job
            assert thief is not None and thief.idx == 0
            setup.ledger.complete(thief.chunk_id, thief.lease_token, result='"/thief.json"')
        return [result_for(audio) for audio in audios]

    transcriber = BatchTranscriber(slow)
    running = batch_worker(setup, transcriber, batch_size=3)
    assert running.run() == EXIT_DONE
    assert running.chunks_done == 2
    assert setup.states() == [(0, "done", 2), (1, "done", 1), (2, "done", 1)]
    assert setup.ledger.result(setup.ledger.chunks("ep1")[0]["id"]) == "/thief.json"


def test_a_batch_that_fails_is_decoded_chunk_by_chunk_to_find_the_bad_one(setup: Setup) -> None:
    bad = samples(LENGTHS)[1]

    def one_bad(n: int, audios: list[np.ndarray], _: Callable[[], bool]) -> list[ResultModel]:
        if any(len(audio) == bad for audio in audios):
            raise ValueError("cannot decode this one")
        return [result_for(audio) for audio in audios]

    transcriber = BatchTranscriber(one_bad)
    running = batch_worker(setup, transcriber, batch_size=3)
    assert running.run() == EXIT_DONE
    assert transcriber.batches[:4] == [samples(LENGTHS), *([length] for length in samples(LENGTHS))]
    assert setup.states() == [(0, "done", 1), (1, "dead", MAX_ATTEMPTS), (2, "done", 1)]
    assert setup.ledger.chunks("ep1")[1]["error"] == "ValueError: cannot decode this one"
    assert running.chunks_done == 2


# Configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WHISPERFARM_URL": "http://coord:8765"},
        {"WHISPERFARM_TOKEN": "t"},
        {"WHISPERFARM_URL": "", "WHISPERFARM_TOKEN": "t"},
        {"WHISPERFARM_URL": "/", "WHISPERFARM_TOKEN": "t"},
    ],
)
def test_config_needs_url_and_token(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="WHISPERFARM_URL and WHISPERFARM_TOKEN"):
        WorkerConfig.from_env(env)


def test_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.config.os.cpu_count", lambda: 6)
    monkeypatch.setattr("worker.config.os.getpid", lambda: 4321)
    monkeypatch.setattr("worker.config.socket.gethostname", lambda: "box")
    config = WorkerConfig.from_env(
        {"WHISPERFARM_URL": "http://coord:8765/", "WHISPERFARM_TOKEN": "t"}
    )

    assert config.url == "http://coord:8765"
    assert config.token == "t"
    assert config.worker_id == "box-4321"
    assert config.kind == "remote"
    assert config.threads == 6
    assert (config.device, config.compute_type, config.batch_size) == ("auto", None, None)
    assert config.compute_type_on(Device.CPU) == "int8"  # set per device, once resolved
    assert config.compute_type_on(Device.CUDA) == "float16"
    assert config.batch_size_on(Device.CPU) == DEFAULT_BATCH_SIZE[Device.CPU]
    assert config.batch_size_on(Device.CUDA) == 16
    assert config.prefetch is True
    assert config.preload_model is None
    assert config.model_dir is None
    assert config.give_up_seconds == 120.0
    assert (config.host, config.machine_id, config.region) == ("box", None, None)
    assert config.info().model_dump() == {
        "id": "box-4321",
        "kind": "remote",
        "host": "box",
        "machine_id": None,
        "region": None,
        "threads": 6,
    }


def test_config_on_fly_and_overrides() -> None:
    env = {
        "WHISPERFARM_URL": "https://coord.example",
        "WHISPERFARM_TOKEN": "t",
        "FLY_MACHINE_ID": "e784079b449483",
        "FLY_REGION": "ord",
        "WHISPERFARM_THREADS": "0",
        "WHISPERFARM_MODEL": "/models/small.en",
        "WHISPERFARM_MODEL_DIR": "/models",
        "WHISPERFARM_COMPUTE_TYPE": "float32",
        "WHISPERFARM_GIVE_UP_SECONDS": "7.5",
    }
    config = WorkerConfig.from_env(env)
    assert (config.worker_id, config.kind, config.region) == ("e784079b449483", "fly", "ord")
    assert config.machine_id == "e784079b449483"
    assert config.threads == 1  # never below one
    assert (config.preload_model, config.model_dir) == ("/models/small.en", "/models")
    assert config.compute_type == "float32"
    assert config.compute_type_on(Device.CUDA) == "float32"  # a set one beats the device's
    assert config.give_up_seconds == 7.5
    batched = WorkerConfig.from_env(
        env
        | {"WHISPERFARM_BATCH_SIZE": "8", "WHISPERFARM_DEVICE": "cpu", "WHISPERFARM_PREFETCH": "0"}
    )
    assert (batched.batch_size_on(Device.CUDA), batched.device, batched.prefetch) == (
        8,
        "cpu",
        False,
    )

    named = WorkerConfig.from_env(
        env | {"WHISPERFARM_WORKER_ID": "mine", "WHISPERFARM_WORKER_KIND": "local"}
    )
    assert (named.worker_id, named.kind) == ("mine", "local")


@pytest.mark.parametrize(
    "extra",
    [
        {"WHISPERFARM_THREADS": "many"},
        {"WHISPERFARM_GIVE_UP_SECONDS": "soon"},
        {"WHISPERFARM_BATCH_SIZE": "0"},
        {"WHISPERFARM_BATCH_SIZE": "65"},  # more than a claim may ask for
    ],
)
def test_config_bad_numbers(extra: dict[str, str]) -> None:
    env = {"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t"} | extra
    with pytest.raises(ConfigError, match="bad number"):
        WorkerConfig.from_env(env)


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8765", "ftp://host/", "http://"])
def test_config_refuses_a_coordinator_url_that_is_no_http_url(url: str) -> None:
    """It was retried as unreachable for WHISPERFARM_GIVE_UP_SECONDS (120 s)."""
    with pytest.raises(ConfigError, match="not an http"):
        WorkerConfig.from_env({"WHISPERFARM_URL": url, "WHISPERFARM_TOKEN": "t"})


def test_config_takes_http_and_https_urls() -> None:
    for url in ("http://10.0.0.5:8765", "https://farm.example.com/"):
        env = {"WHISPERFARM_URL": url, "WHISPERFARM_TOKEN": "t"}
        assert WorkerConfig.from_env(env).url == url.rstrip("/")


# The client's retry policy ---------------------------------------------------------------------


@dataclass
class Script:
    """A MockTransport handler answering from a list; the last answer repeats."""

    answers: list[Any]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json={"detail": f"status {answer}"})
        return httpx.Response(200, json=answer)


def client_for(script: Script, give_up: float = 60.0) -> tuple[CoordinatorClient, list[float]]:
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://coord")
    client = CoordinatorClient(
        "http://coord", TOKEN, give_up_seconds=give_up, http=http, sleep=sleeps.append
    )
    return client, sleeps


DONE = {"status": "done", "retry_after": 0.0}
DONE_REPLY = ClaimReply.model_validate(DONE)


@pytest.mark.parametrize(
    "transient", [500, 502, 503, 429, httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
def test_client_retries_transient_errors(transient: Any) -> None:
    script = Script([transient, transient, DONE])
    client, sleeps = client_for(script)
    assert client.claim(WorkerModel(id="w")) == DONE_REPLY
    assert len(script.requests) == 3
    assert len(sleeps) == 2
    assert all(0 < s <= 10.0 for s in sleeps)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in script.requests)
    assert json.loads(script.requests[0].content) == {"worker": {"id": "w"}}
    client.close()


def test_client_backs_off_exponentially_with_jitter_up_to_ten_seconds() -> None:
    script = Script([503] * 7 + [DONE])
    client, sleeps = client_for(script)
    assert client.claim(WorkerModel(id="w")) == DONE_REPLY
    floors = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(sleeps) == len(floors)
    for slept, floor in zip(sleeps, floors, strict=True):
        assert floor <= slept <= min(floor + 1.0, 10.0)
    client.close()


@pytest.mark.parametrize("transient", [503, httpx.ConnectError("refused")])
def test_client_gives_up_after_give_up_seconds(transient: Any) -> None:
    script = Script([transient])
    client, _ = client_for(script, give_up=0.0)
    with pytest.raises(Unreachable, match="unreachable"):
        client.claim(WorkerModel(id="w"))
    assert len(script.requests) >= 1
    client.close()


def test_client_says_it_is_retrying_with_the_url_and_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker pointed at a wrong URL used to say nothing until it gave up."""
    script = Script([httpx.ConnectError("Connection refused"), 503, DONE])
    client, _ = client_for(script)
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert client.claim(WorkerModel(id="w")) == DONE_REPLY
    lines = [r.getMessage() for r in caplog.records if r.name == "worker"]
    assert len(lines) == 2, lines
    assert all("http://coord" in line and "retrying" in line for line in lines)
    assert "ConnectError: Connection refused" in lines[0]
    assert "503" in lines[1]
    client.close()


def test_client_keeps_retrying_until_give_up_seconds_pass() -> None:
    script = Script([503])
    client, sleeps = client_for(script, give_up=0.05)  # real monotonic time; sleep is a no-op
    with pytest.raises(Unreachable):
        client.claim(WorkerModel(id="w"))
    assert len(script.requests) > 1
    assert len(sleeps) == len(script.requests) - 1
    client.close()


def test_client_stops_retrying_once_the_worker_is_stopping() -> None:
    """A signal during a retry's pause ends the retries there: the worker used to go on
    trying an unreachable coordinator for give_up_seconds (120 s) after Ctrl-C."""
    stopping = threading.Event()
    script = Script([httpx.ConnectError("refused")])
    http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://coord")
    pauses: list[float] = []

    def signal_during_pause(seconds: float) -> None:
        pauses.append(seconds)
        stopping.set()

    client = CoordinatorClient(
        "http://coord", TOKEN, http=http, sleep=signal_during_pause, stopping=stopping
    )
    with pytest.raises(Unreachable, match="stopping as asked"):
        client.claim(WorkerModel(id="w"))
    assert len(script.requests) == 1
    assert len(pauses) == 1
    client.close()


def test_client_of_a_stopping_worker_tries_once() -> None:
    """Stopping already (handing chunks back on SIGTERM): one try, no pause."""
    stopping = threading.Event()
    stopping.set()
    script = Script([503, DONE])
    http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://coord")
    client = CoordinatorClient("http://coord", TOKEN, http=http, stopping=stopping)
    with pytest.raises(Unreachable, match="stopping as asked"):
        client.claim(WorkerModel(id="w"))
    assert len(script.requests) == 1
    client.close()


def test_the_worker_shares_its_stop_request_with_its_client() -> None:
    client = CoordinatorClient("http://coord", TOKEN)
    worker = Worker(client, Transcriber(threads=1), WorkerModel(id="w"))
    worker.request_stop()
    assert client.stopping.is_set()
    client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_that_cant_reach_its_coordinator_stops_when_told(signum: int) -> None:
    """`whisperfarm worker` pointed at a coordinator that doesn't answer, then Ctrl-C or
    SIGTERM: it exits 0 at once instead of retrying until WHISPERFARM_GIVE_UP_SECONDS."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        **os.environ,
        "WHISPERFARM_URL": f"http://127.0.0.1:{port}",
        "WHISPERFARM_TOKEN": TOKEN,
        "WHISPERFARM_GIVE_UP_SECONDS": "120",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the first retry: the worker is in its backoff now
        lines.append(line)
        if "retrying" in line:
            break
    process.send_signal(signum)
    try:
        _, rest = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the worker was still retrying 20 s after the signal")
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopping as asked" in rest
    assert "giving up" not in rest


def test_client_401_is_unauthorized_at_once() -> None:
    script = Script([401, DONE])
    client, sleeps = client_for(script)
    with pytest.raises(Unauthorized, match="WHISPERFARM_TOKEN"):
        client.claim(WorkerModel(id="w"))
    assert len(script.requests) == 1
    assert sleeps == []
    client.close()


def test_client_409_is_lease_lost_at_once() -> None:
    script = Script([409, DONE])
    client, sleeps = client_for(script)
    with pytest.raises(LeaseLostError):
        client.post_result(
            Lease(chunk_id=5, lease_token="tok"), ResultModel(segments=[], model="m"), 1.0
        )
    assert len(script.requests) == 1
    assert script.requests[0].url.path == "/v1/jobs/5/result"
    assert sleeps == []
    client.close()


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_other_4xx_is_a_protocol_error_not_retried(status: int) -> None:
    script = Script([status, DONE])
    client, sleeps = client_for(script)
    with pytest.raises(CoordinatorError, match=str(status)) as raised:
        client.claim(WorkerModel(id="w"))
    assert not isinstance(raised.value, Unreachable)
    assert len(script.requests) == 1
    assert sleeps == []
    client.close()


def test_client_heartbeat_and_release_are_not_retried() -> None:
    job = Lease(chunk_id=3, lease_token="tok")
    for call in (lambda c: c.heartbeat(job), lambda c: c.release(job)):
        script = Script([503, {"lease_expires_in": 60.0}])
        client, sleeps = client_for(script)
        with pytest.raises((CoordinatorError, httpx.HTTPError)):
            call(client)
        assert len(script.requests) == 1
        assert sleeps == []
        client.close()


def test_client_audio_sends_the_lease_token() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v1/jobs/9/audio":
            return httpx.Response(200, content=b"OggS....", headers={"content-type": "audio/ogg"})
        return httpx.Response(200, content=b"RIFF....")  # an older coordinator: no type

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://coord")
    client = CoordinatorClient("http://coord", TOKEN, http=http)
    job = Lease(chunk_id=9, lease_token="lease-9")
    assert client.audio(job) == ChunkAudio(b"OggS....", "audio/ogg")
    assert requests[0].url.path == "/v1/jobs/9/audio"
    assert requests[0].headers["x-lease-token"] == "lease-9"
    assert client.audio(Lease(chunk_id=8, lease_token="lease-9")) == ChunkAudio(
        b"RIFF....", "audio/wav"
    )
    client.close()


def test_a_transcriber_with_only_transcribe_still_runs_one_chunk_at_a_time(setup: Setup) -> None:
    """scripts/sim_worker.py's sleeping transcriber has ``transcribe`` and nothing else."""

    class Plain:
        def __init__(self) -> None:
            self.calls = 0

        def transcribe(self, audio: np.ndarray, **_: Any) -> ResultModel:
            self.calls += 1
            return result_for(audio)

    plain = Plain()
    running = Worker(setup.client, plain, WorkerModel(id="w1"), clock=StepClock())  # type: ignore[arg-type]
    assert running.run() == EXIT_DONE
    assert plain.calls == 3
    assert setup.states() == [(0, "done", 1), (1, "done", 1), (2, "done", 1)]
