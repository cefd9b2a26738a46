"""The CLI layer: help texts, and bad input ending in one clear line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.support.paths import REPO, SAMPLE
from whisperfarm.cli import app
from worker.device import DEFAULT_BATCH_SIZE, Device, resolve

runner = CliRunner()


def commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", commands())
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


def test_every_command_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for name in commands():
        assert f"whisperfarm {name}" in readme, f"README does not document '{name}'"


def subcommands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    machines = group.commands["machines"]  # type: ignore[attr-defined]
    return sorted(f"machines {name}" for name in machines.commands)


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help_with_an_example_and_is_in_the_readme(name: str) -> None:
    result = runner.invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    readme = (REPO / "README.md").read_text()
    assert f"whisperfarm {name}" in readme, f"README does not document '{name}'"


def _one_line_error(result: Result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("not audio at all\n" * 50), p)[1], "not audio"),
    ],
    ids=["missing", "directory", "empty", "text-named-mp3"],
)
def test_bad_input(tmp_path: Path, make: Callable[[Path], Path], expected: str, home: Path) -> None:
    path = make(tmp_path / "show.mp3")
    result = runner.invoke(app, ["transcribe", str(path), "-o", str(tmp_path / "out")])
    assert expected in _one_line_error(result)
    assert not (tmp_path / "out").exists()
    assert not (home / "ledger.db").exists(), "a rejected input must not touch the ledger"


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "--format", "srt,docx"])
    assert result.exit_code == 2
    assert "docx" in _one_line_error(result)


def test_model_directory_without_a_model(tmp_path: Path) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "--model", str(empty)])
    assert "model.bin" in _one_line_error(result)


def test_unknown_model_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "--model", "enormous.en"])
    assert "unknown model" in _one_line_error(result)


def test_worker_without_a_coordinator_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPERFARM_GIVE_UP_SECONDS", "0")
    result = runner.invoke(app, ["worker", "--url", "http://127.0.0.1:9", "--token", "x"])
    assert result.exit_code == 3


def test_worker_takes_its_coordinator_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WHISPERFARM_URL and WHISPERFARM_TOKEN, as the README says workers are configured:
    the URL was refused as a missing --url."""
    monkeypatch.setenv("WHISPERFARM_GIVE_UP_SECONDS", "0")
    monkeypatch.setenv("WHISPERFARM_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WHISPERFARM_TOKEN", "x")
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 3, result.output  # it tried that coordinator, and gave up


@pytest.mark.parametrize("command", ["transcribe", "worker"])
def test_batch_size_help_gives_the_defaults_the_worker_uses(command: str) -> None:
    """The help said 1 on a CPU after the default became 4."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    row = next(line for line in result.output.splitlines() if "--batch-size" in line)
    cpu, gpu = DEFAULT_BATCH_SIZE[Device.CPU], DEFAULT_BATCH_SIZE[Device.CUDA]
    assert f"[default: {cpu} on a CPU, {gpu} on a GPU]" in row


# Subtitle flags -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["transcribe", "export"])
def test_subtitle_flags_in_help_without_bool_metavars(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "160"})
    rows = {
        flag: next(line for line in result.output.splitlines() if flag in line)
        for flag in ("--max-line-width", "--max-line-count", "--highlight-words")
    }
    assert "<bool>" not in rows["--highlight-words"]
    assert "--no-highlight-words" in rows["--highlight-words"]
    assert "CHARS" in rows["--max-line-width"] and "LINES" in rows["--max-line-count"]


@pytest.mark.parametrize("command", [[name] for name in commands()] + [
    name.split() for name in subcommands()
])  # fmt: skip
def test_no_flag_shows_a_bool_metavar_in_help(command: list[str]) -> None:
    """Flags read as the whisper CLIs' do (--words, --vad-filter, --yes …), without a
    <bool> after them; typer's own --help is the one left."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "<bool>" in line]
    assert all("--help" in row for row in rows), rows


def test_transcribe_help_and_the_readme_list_the_whisper_cli_flags() -> None:
    result = runner.invoke(app, ["transcribe", "--help"], env={"COLUMNS": "160"})
    reference = (REPO / "README.md").read_text().split("## CLI reference", 1)[1]
    for flag in (
        "--task",
        "--initial-prompt",
        "--hotwords",
        "--beam-size",
        "--temperature",
        "--vad-filter",
        "--no-vad-filter",
        "--language",
    ):
        assert flag in result.output, flag
        assert f"`{flag}" in reference, f"the README's CLI reference lacks {flag}"


def test_transcribe_passes_the_subtitle_flags_to_the_run(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whisperfarm.errors import UsageError
    from whisperfarm.farm import Farm

    seen = []

    def transcribe(self: Farm, paths: list[Path], out_dir: Path, formats: list[str]) -> None:
        seen.append(self.settings)
        raise UsageError("stopped here by the test")

    monkeypatch.setattr(Farm, "transcribe", transcribe)
    flags = ["--max-line-width", "32", "--max-line-count", "3", "--highlight-words"]
    result = runner.invoke(app, ["transcribe", str(SAMPLE), "-o", str(tmp_path), *flags])
    assert "stopped here by the test" in _one_line_error(result)
    (settings,) = seen
    style = settings.cue_style()
    assert (style.max_line_width, style.max_line_count, style.highlight_words) == (32, 3, True)
    assert settings.word_timestamps, "karaoke needs word timings: --highlight-words asks for them"


def test_transcribe_highlight_words_with_no_words_is_a_usage_error(
    home: Path, tmp_path: Path
) -> None:
    args = ["transcribe", str(SAMPLE), "-o", str(tmp_path / "out"), "--highlight-words"]
    result = runner.invoke(app, [*args, "--no-words"])
    assert result.exit_code == 2
    assert "--highlight-words needs word timestamps" in _one_line_error(result)
    assert not (home / "ledger.db").exists()


@pytest.mark.parametrize("size", ["0", "65"])
def test_worker_batch_size_out_of_range_is_one_line_and_exit_2(size: str) -> None:
    result = runner.invoke(
        app, ["worker", "--url", "http://127.0.0.1:1", "--token", "t", "--batch-size", size]
    )
    assert result.exit_code == 2
    assert "--batch-size" in result.output
    assert "Traceback" not in result.output


def test_worker_device_cuda_without_a_gpu_exits_2_before_it_claims(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.__main__.resolve", partial(resolve, count=lambda: 0))
    result = runner.invoke(
        app, ["worker", "--url", "http://127.0.0.1:1", "--token", "t", "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_off_a_terminal_a_line_is_one_line_however_narrow(home: Path) -> None:
    """Piped output is for scripts and logs: rich would wrap it at the console's width."""
    result = runner.invoke(
        app,
        ["transcribe", str(SAMPLE), "-m", "tiny.en", "-w", "0", "--dry-run"],
        env={"COLUMNS": "40"},
    )
    assert result.exit_code == 0, result.output
    assert (
        "plan: no local workers (join with 'whisperfarm worker'); nothing started (--dry-run)"
        in result.output.splitlines()
    )
