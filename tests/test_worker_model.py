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

from worker.__main__ import preloaded_transcriber
from worker.config import WorkerConfig
from worker.models import ModelLoadError, load_model
from worker.transcriber import Transcriber

AUDIO = np.zeros(16_000, dtype=np.float32)


@dataclass
class FakeWhisper:
    """Answers like faster-whisper's WhisperModel.transcribe, naming itself in the text."""

    name: str

    def transcribe(self, audio: np.ndarray, **_: Any) -> tuple[Any, Any]:
        segment = SimpleNamespace(
            start=0.0, end=1.0, text=f" by {self.name}", avg_logprob=-0.1, no_speech_prob=0.0
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

    result = transcriber.transcribe(AUDIO, model="tiny.en")

    assert result.model == "tiny.en"
    assert result.segments[0].text == " by tiny.en"
    assert loader.loads == ["small.en", "tiny.en"]


def test_the_preloaded_model_serves_the_jobs_that_name_it_without_a_second_load() -> None:
    loader = Loader({"tiny.en"})
    transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="tiny.en"), loader)
    for _ in range(3):
        assert transcriber.transcribe(AUDIO, model="tiny.en").model == "tiny.en"
    assert loader.loads == ["tiny.en"]


def test_a_model_that_cannot_be_preloaded_leaves_the_worker_able_to_run_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loader = Loader({"tiny.en"})
    with caplog.at_level(logging.WARNING, logger="worker"):
        transcriber = preloaded_transcriber(config(WHISPERFARM_MODEL="large-v3"), loader)
    assert "'large-v3' is not available on this worker" in caplog.text
    assert transcriber.transcribe(AUDIO, model="tiny.en").model == "tiny.en"


def test_a_model_that_failed_to_load_fails_again_at_once_and_others_still_load() -> None:
    loader = Loader({"tiny.en"})
    transcriber = Transcriber(threads=1, loader=loader)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match=r"'small\.en' is not available"):
            transcriber.transcribe(AUDIO, model="small.en")
    assert loader.loads == ["small.en"]  # a failed download is not paid for on every chunk
    assert transcriber.transcribe(AUDIO, model="tiny.en").model == "tiny.en"


def test_switching_models_keeps_one_in_memory() -> None:
    loader = Loader({"tiny.en", "base.en"})
    transcriber = Transcriber(threads=1, loader=loader)
    for name in ["tiny.en", "base.en", "tiny.en"]:
        assert transcriber.transcribe(AUDIO, model=name).model == name
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
