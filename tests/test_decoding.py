"""The whisper CLIs' decoding flags: validated before any work (languages, translate with an
English-only model), recorded with the episode, carried by the job to the worker and on to
faster-whisper."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import worker.transcriber
from tests.support.paths import SAMPLE
from whisperfarm.cli import app
from whisperfarm.decoding import Decoding, describe
from whisperfarm.errors import UsageError
from whisperfarm.languages import NAMES, language_code, whisper_codes
from whisperfarm.settings import load_settings
from worker.transcriber import Transcriber, fallback_temperatures
from worker.wire import DecodeOptions, Job

runner = CliRunner()


def one_error(output: str) -> str:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


# Languages -----------------------------------------------------------------------------


def test_every_language_whisper_knows_has_a_name_and_no_other() -> None:
    assert sorted(NAMES) == sorted(whisper_codes())


@pytest.mark.parametrize(
    ("given", "model", "code"),
    [
        ("de", "small", "de"),
        ("German", "large-v3-turbo", "de"),
        ("  GERMAN ", "small", "de"),
        ("Mandarin", "small", "zh"),
        ("haw", "small", "haw"),
        ("English", "tiny.en", "en"),
        ("en", "tiny.en", "en"),
        (None, "tiny.en", None),
    ],
)
def test_a_language_is_taken_by_code_or_english_name(
    given: str | None, model: str, code: str | None
) -> None:
    assert language_code(given, model) == code


def test_an_unknown_language_is_refused_naming_the_codes() -> None:
    with pytest.raises(UsageError) as refused:
        language_code("xx", "small")
    message = str(refused.value)
    assert "--language xx" in message and "de, el, en, es" in message and "yue" in message


@pytest.mark.parametrize("given", ["de", "German", "xx"])
def test_an_english_only_model_takes_english_only(given: str) -> None:
    with pytest.raises(UsageError, match="English-only model; use --language en"):
        language_code(given, "/models/small.en")


def test_settings_store_the_code_of_a_language_name(home: Path) -> None:
    assert (
        load_settings(model="small", language="French").checked_for_transcription().language == "fr"
    )


def test_translate_with_an_english_only_model_is_refused(home: Path) -> None:
    with pytest.raises(UsageError, match="--task translate needs a multilingual model"):
        load_settings(model="tiny.en", task="translate").checked_for_transcription()
    settings = load_settings(model="small", task="translate").checked_for_transcription()
    assert settings.task == "translate"


def test_a_config_files_language_does_not_stop_commands_that_transcribe_nothing(
    home: Path,
) -> None:
    """status, episodes, export load the settings with the default model (an .en one)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('language = "de"\n')
    assert runner.invoke(app, ["episodes"]).exit_code == 0
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "--dry-run"])
    assert "English-only" in one_error(result.output)
    assert (
        runner.invoke(app, ["transcribe", str(SAMPLE), "-m", "small", "--dry-run"]).exit_code == 0
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--language", "xx", "-m", "small"], "not a language Whisper knows"),
        (["--language", "German"], "English-only"),
        (["--task", "translate"], "--task translate needs a multilingual model"),
    ],
)
def test_transcribe_refuses_bad_decoding_flags_before_any_work(
    home: Path, args: list[str], says: str
) -> None:
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "-m", "tiny.en", *args])
    assert result.exit_code == 2
    assert says in one_error(result.output)
    assert not (home / "ledger.db").exists()


@pytest.mark.parametrize(
    "args", [["--beam-size", "0"], ["--temperature", "1.5"], ["--task", "summarise"]]
)
def test_decoding_flags_out_of_range_are_usage_errors(home: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "-m", "tiny.en", *args])
    assert result.exit_code == 2
    assert args[0] in result.output and "Traceback" not in result.output
    assert not (home / "ledger.db").exists()


def test_the_decoding_settings_come_from_the_config_file_and_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        'model = "small"\ntask = "translate"\ninitial_prompt = "Names: Ada."\nvad_filter = true\n'
    )
    monkeypatch.setenv("WHISPERFARM_TEMPERATURE", "0.2")
    monkeypatch.setenv("WHISPERFARM_HOTWORDS", "Lovelace")
    decoding = load_settings(beam_size=3).decoding()
    assert decoding == Decoding(
        beam_size=3,
        task="translate",
        initial_prompt="Names: Ada.",
        hotwords="Lovelace",
        temperature=0.2,
        vad_filter=True,
    )
    assert load_settings(task="transcribe").task == "transcribe"  # the flag beats the file


# On to the worker ----------------------------------------------------------------------


class Recorder:
    """A faster-whisper model that records what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Any, Any]:
        self.calls.append(kwargs)
        return iter([]), SimpleNamespace(language="de", duration=1.0)


def test_the_worker_decodes_with_every_option_the_job_carries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batched: list[dict[str, Any]] = []

    def decode_batch(whisper: Any, audios: list[np.ndarray], **kwargs: Any) -> Any:
        batched.append(kwargs)
        return [[] for _ in audios], "en"

    monkeypatch.setattr(worker.transcriber, "decode_batch", decode_batch)
    recorder = Recorder()
    transcriber = Transcriber(threads=1, loader=lambda *a, **k: recorder)
    job = Job.model_validate(
        {
            "chunk_id": 1, "episode_id": "e", "idx": 0, "start": 0, "end": 1, "attempt": 1,
            "lease_token": "t", "lease_expires_at": 1, "model": "small", "lease_seconds": 60,
            "audio_url": "/a", "language": "de", "beam_size": 2, "task": "translate",
            "initial_prompt": "Names: Ada.", "hotwords": "Lovelace", "temperature": 0.4,
            "vad_filter": True, "word_timestamps": True,
        }
    )  # fmt: skip
    transcriber.transcribe(np.zeros(16_000, np.float32), model="small", options=job)
    transcriber.transcribe(np.zeros(16_000, np.float32), model="small")
    (asked,) = recorder.calls  # options worker.batched doesn't run: faster-whisper's own
    assert asked == {
        "language": "de",
        "beam_size": 2,
        "word_timestamps": True,
        "task": "translate",
        "initial_prompt": "Names: Ada.",
        "hotwords": "Lovelace",
        "vad_filter": True,
        "temperature": (0.4, 0.6, 0.8, 1.0),
    }
    # The defaults: worker.batched, with faster-whisper's own fallback (0 … 1.0)
    (plain,) = batched
    assert (plain["language"], plain["beam_size"]) == (None, 5)


def test_the_worker_loads_the_model_as_the_jobs_compute_type() -> None:
    """The compute type is part of what a result is (its key): a worker, wherever it runs
    and whatever its own setting, loads the model as the job says; a job without one (a
    coordinator from before) gets the worker's own."""
    loads: list[tuple[str, str]] = []

    def loader(name: str, *, compute_type: str, **_: Any) -> Recorder:
        loads.append((name, compute_type))
        return Recorder()

    transcriber = Transcriber(threads=1, compute_type="int8", loader=loader)
    audio = np.zeros(16_000, np.float32)
    # Word timestamps: decoded by the model's own transcribe, which Recorder answers.
    words = DecodeOptions(word_timestamps=True)
    float32 = DecodeOptions(compute_type="float32", word_timestamps=True)
    transcriber.transcribe(audio, model="small", options=float32)
    transcriber.transcribe(audio, model="small", options=float32)
    transcriber.transcribe(audio, model="small", options=words)
    assert loads == [("small", "float32"), ("small", "int8")]  # kept while it's the same


def test_fallback_temperatures_rise_by_0_2_up_to_1() -> None:
    assert fallback_temperatures(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert fallback_temperatures(0.5) == (0.5, 0.7, 0.9)
    assert fallback_temperatures(1.0) == (1.0,)


def test_the_status_line_names_the_options() -> None:
    options = Decoding(
        language="de", task="translate", temperature=0.2, initial_prompt="Names: Ada."
    ).options()
    assert describe(options) == (
        "de · translate · beam 5 · temperature 0.2 · int8 · prompt 'Names: Ada.'"
    )
    assert json.loads(json.dumps(options)) == options
