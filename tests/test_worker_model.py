"""Which model a worker runs: the one each job names, whatever the worker preloaded
(WHISPERFARM_MODEL); a model it can't load fails the job with the reason, not the worker.
The loader is injected: no weights are loaded here (tests/test_e2e_local.py runs the real
model)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from worker.__main__ import preload, preloaded_transcriber
from worker.config import WorkerConfig
from worker.models import ModelLoadError, load_model
from worker.standby import Preload
from worker.transcriber import Transcriber
from worker.wire import DecodeOptions

AUDIO = np.zeros(16_000, dtype=np.float32)
WORDS = DecodeOptions(word_timestamps=True)
"""Options decoded by the model's own transcribe, which FakeWhisper answers (the defaults
go to worker.batched, which a fake model can't run)."""


@dataclass
class FakeWhisper:
    """Answers like faster-whisper's WhisperModel.transcribe, naming itself in the text."""

    name: str

    def transcribe(self, audio: np.ndarray, **_: Any) -> tuple[Any, Any]:
        segment = SimpleNamespace(
            start=0.0,
            end=1.0,
            text=f" by {self.name}",
            avg_logprob=-0.1,
            no_speech_prob=0.0,
            words=[],
        )
        return iter([segment]), SimpleNamespace(language="en", duration=len(audio) / 16_000)


@dataclass
class Loader:
    """Loads the models in ``have``; any other name fails as faster-whisper's would."""

    have: set[str]
    loads: list[str] = field(default_factory=list)

    def __call__(self, name: str, **_: Any) -> FakeWhisper:
        self.loads.append(name)
        if name not in self.have:
            raise ModelLoadError(f"model {name!r} is not available on this worker (no hub)")
        return FakeWhisper(name)


def config(**env: str) -> WorkerConfig:
    return WorkerConfig.from_env({"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t", **env})


def test_a_worker_that_preloaded_another_model_runs_the_jobs_model() -> None:
    loader = Loader({"tiny.en", "small.en"})
    transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="small.en"), loader)
    assert loader.loads == ["small.en"]  # loaded before the first job

    result = transcriber.transcribe(AUDIO, model="tiny.en", options=WORDS)

    assert result.model == "tiny.en"
    assert result.segments[0].text == " by tiny.en"
    assert loader.loads == ["small.en", "tiny.en"]


def test_the_preloaded_model_serves_the_jobs_that_name_it_without_a_second_load() -> None:
    loader = Loader({"tiny.en"})
    transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="tiny.en"), loader)
    for _ in range(3):
        assert transcriber.transcribe(AUDIO, model="tiny.en", options=WORDS).model == "tiny.en"
    assert loader.loads == ["tiny.en"]


def test_a_model_that_cannot_be_preloaded_leaves_the_worker_able_to_run_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loader = Loader({"tiny.en"})
    with caplog.at_level(logging.WARNING, logger="worker"):
        transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="large-v3"), loader)
    assert "'large-v3' is not available on this worker" in caplog.text
    assert transcriber.transcribe(AUDIO, model="tiny.en", options=WORDS).model == "tiny.en"


# A standby worker's model, loaded before its order (worker.standby) ----------------------

TINY = {"WHISPERFARM_MODEL": "tiny.en", "WHISPERFARM_THREADS": "1"}


def test_a_standbys_preloaded_model_serves_its_order_without_a_second_load() -> None:
    loader = Loader({"tiny.en"})
    ready = preload(Preload({**TINY, "WHISPERFARM_COMPUTE_TYPE": "int8"}), {}, loader)
    assert ready is not None and ready.loaded == "tiny.en"
    order = config(**TINY, WHISPERFARM_COMPUTE_TYPE="int8", WHISPERFARM_WORKER_ID="w0")
    assert preloaded_transcriber(order, loader, ready=ready) is ready
    assert ready.transcribe(AUDIO, model="tiny.en", options=WORDS).model == "tiny.en"
    assert loader.loads == ["tiny.en"]


@pytest.mark.parametrize(
    "order",
    [
        {"WHISPERFARM_THREADS": "2"},
        {"WHISPERFARM_COMPUTE_TYPE": "int8_float32"},
        {"WHISPERFARM_MODEL_DIR": "/models"},
    ],
)
def test_an_order_for_other_threads_or_compute_type_gets_its_own_model(
    order: dict[str, str],
) -> None:
    loader = Loader({"tiny.en"})
    ready = preload(Preload(TINY), {}, loader)
    transcriber = preloaded_transcriber(config(**{**TINY, **order}), loader, ready=ready)
    assert transcriber is not ready
    assert transcriber.holds("tiny.en")
    assert loader.loads == ["tiny.en", "tiny.en"]


def test_an_order_for_another_model_swaps_the_preloaded_one() -> None:
    loader = Loader({"tiny.en", "base.en"})
    ready = preload(Preload(TINY), {}, loader)
    order = config(**{**TINY, "WHISPERFARM_MODEL": "base.en"})
    assert preloaded_transcriber(order, loader, ready=ready) is ready
    assert ready.loaded == "base.en"
    assert loader.loads == ["tiny.en", "base.en"]


def test_a_preload_that_cannot_be_had_is_not_kept_and_the_order_loads_afresh() -> None:
    """A hub model the CLI is still fetching: the standby downloads nothing, and its
    failure must not be remembered for the worker's life (Transcriber's refusals are)."""
    loader = Loader(set())
    assert preload(Preload({**TINY, "WHISPERFARM_MODEL": "small.en"}), {}, loader) is None
    loader.have.add("small.en")  # fetched by the CLI meanwhile
    transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="small.en"), loader, ready=None)
    assert transcriber.holds("small.en")
    assert loader.loads == ["small.en", "small.en"]


@pytest.mark.parametrize(
    "env",
    [{"WHISPERFARM_THREADS": "many"}, {"WHISPERFARM_DEVICE": "tpu"}, {"WHISPERFARM_THREADS": "1"}],
)
def test_a_preload_without_a_model_or_with_a_bad_value_loads_nothing(
    env: dict[str, str],
) -> None:
    loader = Loader({"tiny.en"})
    assert preload(Preload(env), {}, loader) is None
    assert loader.loads == []


def test_a_model_that_failed_to_load_fails_again_at_once_and_others_still_load() -> None:
    loader = Loader({"tiny.en"})
    transcriber = Transcriber(threads=1, loader=loader)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match=r"'small\.en' is not available"):
            transcriber.transcribe(AUDIO, model="small.en", options=WORDS)
    assert loader.loads == ["small.en"]  # a failed download is not paid for on every chunk
    assert transcriber.transcribe(AUDIO, model="tiny.en", options=WORDS).model == "tiny.en"


def test_switching_models_keeps_one_in_memory() -> None:
    loader = Loader({"tiny.en", "base.en"})
    transcriber = Transcriber(threads=1, loader=loader)
    for name in ["tiny.en", "base.en", "tiny.en"]:
        assert transcriber.transcribe(AUDIO, model=name, options=WORDS).model == name
    assert loader.loads == ["tiny.en", "base.en", "tiny.en"]


def test_the_real_loader_names_the_model_and_the_fixes(tmp_path: Any) -> None:
    """faster-whisper's own loading of a name it doesn't have: a hub repository that
    doesn't exist, so nothing is downloaded even where the hub can be reached. It fails
    with one line that says which model and how to make it available."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HOME", str(tmp_path / "hf"))
        with pytest.raises(ModelLoadError) as caught:
            load_model("no-such/model", threads=1, compute_type="int8", model_dir=str(tmp_path))
    message = str(caught.value)
    assert message.startswith("model 'no-such/model' is not available on this worker (")
    assert "--build-arg MODEL=no-such/model" in message
    assert "WHISPERFARM_MODEL_DIR/no-such/model" in message
    assert "\n" not in message
