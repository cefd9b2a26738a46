"""Standby workers (whisperfarm.spawn, whisperfarm.launch, worker.standby): a
``transcribe`` that leaves its local fleet at the default starts the workers' processes
before its own imports and hands them their orders when the run starts."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from tests.support.paths import REPO
from whisperfarm.cli import app
from whisperfarm.launch import (
    FLAG_OPTIONS,
    LAYOUT_OPTIONS,
    LAYOUT_VARIABLES,
    NO_STANDBY_OPTIONS,
    NO_STANDBY_VARIABLES,
    VALUE_OPTIONS,
    main,
    preload_env,
    standby_layout,
)
from whisperfarm.settings import Settings
from whisperfarm.spawn import StandbyWorkers, default_workers, local_layout
from worker.standby import Preload, StandbyOrder, read_message

CLIP = REPO / "samples" / "real" / "sb-spk1_snt1.flac"  # "The child almost hurt the small dog."
TIMEOUT = 300
TRANSCRIBE = typer.main.get_command(app).commands["transcribe"]  # type: ignore[attr-defined]


# Which command lines get standby workers --------------------------------------------------


def parsed_layout(args: list[str], cpus: int) -> tuple[int, int] | None:
    """The local fleet the CLI's own parser gives ``args`` (None: no local fleet, or the
    command line is refused)."""
    try:
        params = TRANSCRIBE.make_context("transcribe", list(args)).params
    except Exception:  # the parser's usage errors
        return None
    if params["dry_run"] or params["gpu"] or params["backend"] is not None:
        return None
    workers, threads = local_layout(cpus, params["workers"], params["threads"])
    return (workers, threads) if workers >= 1 else None


AGREED = [
    [],
    ["-m", "tiny.en"],
    ["--workers", "3"],
    ["-w", "1", "--threads", "2"],
    ["-w3"],
    ["--workers=2", "--threads=1"],
    ["--workers", "1", "--workers", "2"],  # the last one counts
    ["-w", "1", "--workers", "2"],
    ["--workers", "2", "-w", "1"],
    ["-qw2"],  # short options clustered
    ["-yw", "3"],
    ["-q", "-y", "--words", "--no-vad-filter", "-f", "all", "-o", "out", "-w", "2"],
    ["-m", "-w3"],  # a model named -w3, not a layout
    ["--initial-prompt", "--dry-run", "-w", "2"],  # a prompt, not --dry-run
    ["--", "-w5"],  # an input named -w5
    ["b.mp3", "-", "--language", "de"],
]
"""Command lines the launcher reads exactly as the CLI does."""

DECLINED = [
    ["-w", "0"],  # no local worker
    ["--workers", "many"],
    ["-w=2"],  # the parser refuses it
    ["--threads"],
    ["--backend", "fly"],
    ["--backend=local"],
    ["--dry-run"],
    ["--gpu"],
    ["--help"],
    ["--words=yes"],
    ["--no-such-option"],
]
"""Command lines with no standby: no local fleet, a usage error, or not certain."""


@pytest.mark.parametrize("args", AGREED)
def test_the_launcher_reads_the_layout_as_the_cli_does(args: list[str]) -> None:
    expected = parsed_layout(["a.mp3", *args], cpus=8)
    assert expected is not None
    assert standby_layout(["transcribe", "a.mp3", *args], {}, cpus=8) == expected


@pytest.mark.parametrize("args", DECLINED)
def test_no_standby_where_there_is_no_local_fleet_or_no_certainty(args: list[str]) -> None:
    assert standby_layout(["transcribe", "a.mp3", *args], {}, cpus=8) is None


def test_a_plain_transcribe_gets_the_default_local_fleet_as_standby() -> None:
    assert standby_layout(["transcribe", "a.mp3"], {}, cpus=2) == (2, 1)
    assert standby_layout(["transcribe", "a.mp3"], {}, cpus=8) == default_workers(8) == (4, 2)


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        ([], {"WHISPERFARM_WORKERS": "2"}, (2, 4)),
        ([], {"whisperfarm_workers": "2"}, (2, 4)),  # settings read names in any case
        (["--workers", "1"], {"WHISPERFARM_WORKERS": "2"}, (1, 8)),  # the option first
        ([], {"WHISPERFARM_THREADS": "1"}, (4, 1)),
        ([], {"WHISPERFARM_BACKEND": "fly"}, None),
        ([], {"WHISPERFARM_WORKERS": "0"}, None),
    ],
)
def test_the_environment_comes_after_the_command_line(
    args: list[str], environ: dict[str, str], expected: tuple[int, int] | None
) -> None:
    assert standby_layout(["transcribe", "a.mp3", *args], environ, cpus=8) == expected


@pytest.mark.parametrize("argv", [[], ["status"], ["serve", "a.mp3"], ["worker", "--url", "x"]])
def test_no_standby_for_other_commands(argv: list[str]) -> None:
    assert standby_layout(argv, {}, cpus=2) is None


def test_the_launchers_options_and_variables_are_transcribes_own() -> None:
    """A renamed or added option would make the launcher misread a command line."""
    flags: set[str] = {"--help"}
    values: set[str] = set()
    for param in TRANSCRIBE.params:
        if param.param_type_name == "option":
            (flags if param.is_flag else values).update([*param.opts, *param.secondary_opts])
    assert flags == FLAG_OPTIONS
    assert values == VALUE_OPTIONS
    assert set(NO_STANDBY_OPTIONS) <= flags | values
    by_field = {param.name: set(param.opts) for param in TRANSCRIBE.params}
    for field, names in LAYOUT_OPTIONS.items():
        assert set(names) == by_field[field]
    prefix = Settings.model_config["env_prefix"]
    for field, variable in LAYOUT_VARIABLES.items():
        assert field in Settings.model_fields and variable == f"{prefix}{field}".upper()
    assert (f"{prefix}backend".upper(),) == NO_STANDBY_VARIABLES


def test_both_ways_of_running_the_command_go_through_the_launcher() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'whisperfarm = "whisperfarm.launch:main"' in pyproject
    assert (
        "from whisperfarm.launch import main" in (REPO / "whisperfarm" / "__main__.py").read_text()
    )


# The model they load before their order ----------------------------------------------------


def tiny_en(threads: int = 1, compute_type: str = "int8", model: str = "tiny.en") -> dict[str, str]:
    return {
        "WHISPERFARM_THREADS": str(threads),
        "WHISPERFARM_MODEL": model,
        "WHISPERFARM_COMPUTE_TYPE": compute_type,
    }


def test_the_standbys_are_told_the_model_the_command_line_names() -> None:
    assert preload_env(["transcribe", "a.mp3", "-m", "tiny.en"], threads=1) == tiny_en()
    assert preload_env(
        [
            "transcribe",
            "a.mp3",
            "--model=base.en",
            "--compute-type",
            "int8_float32",
            "-w2",
            "--threads=2",
        ],
        2,
    ) == tiny_en(2, "int8_float32", "base.en")


def test_the_standbys_are_told_the_model_as_the_settings_read_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config file, then the environment, then the command line: the CLI's order."""
    home.mkdir()
    (home / "config.toml").write_text('model = "base.en"\ncompute_type = "int8_float32"\n')
    assert preload_env(["transcribe", "a.mp3"], 1) == tiny_en(1, "int8_float32", "base.en")
    monkeypatch.setenv("WHISPERFARM_MODEL", "small.en")
    assert preload_env(["transcribe", "a.mp3"], 1) == tiny_en(1, "int8_float32", "small.en")
    assert preload_env(["transcribe", "a.mp3", "-m", "tiny.en"], 1) == tiny_en(1, "int8_float32")


@pytest.mark.parametrize(
    ("config", "args", "threads"),
    [
        ('backend = "fly"\n', [], 1),  # a Fly run: its standbys are dismissed
        ("threads = 2\n", [], 1),  # the run will take none of these 1-thread standbys
        ("", ["--threads", "2"], 1),
        ("workers = 0\n", [], 1),
        ("", ["-w", "2", "--threads", "1"], 1),  # the same layout: preloaded
    ],
)
def test_only_standbys_the_run_will_take_are_told_to_load_a_model(
    home: Path, config: str, args: list[str], threads: int
) -> None:
    home.mkdir()
    (home / "config.toml").write_text(config + 'model = "tiny.en"\n')
    env = preload_env(["transcribe", "a.mp3", *args], threads)
    taken = config == "" and args[-1] == "1"
    assert env == (tiny_en(threads) if taken else None)


def test_settings_that_fail_to_read_only_cost_the_preload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong reading the settings for the standbys (the CLI reads them next
    and says what is wrong) stops nothing: the run goes on without a preload."""

    def unreadable(argv: list[str], threads: int) -> dict[str, str]:
        raise PermissionError(13, "Permission denied", "config.toml")

    monkeypatch.setattr("whisperfarm.launch.preload_env", unreadable)
    out = tmp_path / "out"
    argv = ["transcribe", str(CLIP), "-m", "tiny.en", "-o", str(out), "-f", "txt", "-q"]
    monkeypatch.setattr(sys, "argv", ["whisperfarm", *argv])
    with pytest.raises(SystemExit) as end:
        main()
    assert end.value.code == 0
    assert "dog" in (out / f"{CLIP.stem}.txt").read_text().lower()


def test_no_model_is_preloaded_from_settings_the_cli_will_refuse(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text("model = [\n")
    assert preload_env(["transcribe", "a.mp3"], 1) is None
    (home / "config.toml").write_text('compute_type = "int3"\n')
    assert preload_env(["transcribe", "a.mp3"], 1) is None


def test_a_preload_and_an_order_travel_as_lines_of_their_own() -> None:
    order = StandbyOrder(env={"A": "1"}, log="/tmp/w.log")
    lines = io.StringIO((Preload(tiny_en()).to_line() + order.to_line()).decode())
    assert read_message(lines) == Preload(tiny_en())
    assert read_message(lines) == order
    assert read_message(lines) is None


# The processes ----------------------------------------------------------------------------


def test_a_standby_worker_exits_quietly_at_the_end_of_its_input() -> None:
    """As when the CLI is gone without a word."""
    standby = StandbyWorkers.start(1, 1)
    [process] = standby.processes
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=TIMEOUT) == 0
    standby.processes = []


def test_standbys_not_taken_are_ended_at_once() -> None:
    standby = StandbyWorkers.start(2, 1)
    processes = list(standby.processes)
    standby.dismiss()
    assert standby.processes == []
    assert all(process.returncode is not None for process in processes)


def test_a_standby_starts_without_the_fly_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", "secret-fly-token")
    started: list[dict[str, str]] = []

    def popen(command: list[str], *, env: dict[str, str], **kwargs: object) -> object:
        started.append(env)
        return object()

    monkeypatch.setattr("whisperfarm.spawn.subprocess.Popen", popen)
    StandbyWorkers.start(2, 1)
    assert len(started) == 2
    for env in started:
        assert "FLY_API_TOKEN" not in env
        assert env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "1"


def test_a_standby_worker_works_as_ordered_and_logs_where_told(tmp_path: Path) -> None:
    standby = StandbyWorkers.start(2, 1)
    log = tmp_path / "worker-0.log"
    # An order without a coordinator: the worker stops at its configuration, in the log.
    order = StandbyOrder(env={"WHISPERFARM_WORKER_ID": "w0"}, log=str(log))
    assert standby.take(2, order) is None  # started for 1 thread, not 2
    process = standby.take(1, order)
    assert process is not None
    assert process.wait(timeout=TIMEOUT) == 2
    lines = log.read_text().splitlines()
    assert lines[0].startswith("standby worker: ready ")
    assert lines[1].startswith("worker: set WHISPERFARM_URL and WHISPERFARM_TOKEN")
    [left] = standby.processes
    standby.close()
    assert left.returncode is not None
    assert standby.take(1, order) is None  # none left


def test_a_standby_loads_the_model_it_is_told_before_its_order(tmp_path: Path) -> None:
    standby = StandbyWorkers.start(1, 1)
    standby.preload(tiny_en())
    log = tmp_path / "worker-0.log"
    process = standby.take(1, StandbyOrder(env={}, log=str(log)))  # no coordinator
    assert process is not None
    assert process.wait(timeout=TIMEOUT) == 2
    assert log.read_text().startswith("standby worker: ready with tiny.en loaded ")


def test_a_standbys_log_says_how_long_it_waited_for_its_order(tmp_path: Path) -> None:
    standby = StandbyWorkers.start(1, 1)
    standby.preload(tiny_en())
    time.sleep(4)  # the model is loaded well before this: the rest is waiting
    log = tmp_path / "worker-0.log"
    process = standby.take(1, StandbyOrder(env={}, log=str(log)))
    assert process is not None
    assert process.wait(timeout=TIMEOUT) == 2
    first = log.read_text().splitlines()[0]
    waited = float(first.removeprefix("standby worker: ready with tiny.en loaded ").split()[0])
    assert 1.0 < waited < 4.5, first


def test_a_standby_that_died_is_passed_over(tmp_path: Path) -> None:
    standby = StandbyWorkers.start(2, 1)
    dead, alive = standby.processes
    dead.kill()
    dead.wait()
    order = StandbyOrder(env={}, log=str(tmp_path / "w.log"))
    assert standby.take(1, order) is alive
    assert alive.wait(timeout=TIMEOUT) == 2
    standby.close()


def test_an_order_survives_the_line_it_travels_as() -> None:
    order = StandbyOrder(env={"A": "1 2", "B": "ü\n"}, log="/tmp/x y.log")
    assert StandbyOrder.from_line(order.to_line().decode()) == order


# Through the CLI --------------------------------------------------------------------------


def run_cli(*args: str, home: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "whisperfarm", "transcribe", str(CLIP), "-m", "tiny.en", *args],
        env={**os.environ, "WHISPERFARM_HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def worker_logs(home: Path) -> list[str]:
    return [path.read_text() for path in sorted((home / "logs").glob("run-*/worker-*.log"))]


def test_a_plain_transcribe_runs_on_its_standby_workers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_cli("-o", str(tmp_path / "out"), "--format", "txt", home=home)
    assert "dog" in (tmp_path / "out" / "sb-spk1_snt1.txt").read_text().lower()
    logs = worker_logs(home)
    assert len(logs) == default_workers()[0]
    assert all(log.startswith("standby worker: ready with tiny.en loaded ") for log in logs), logs


@pytest.mark.parametrize(
    ("config", "standby"),
    [
        ("workers = 1\nthreads = 1\n", default_workers()[1] == 1),
        # one worker of every core: a standby's only on a machine of one core
        ("workers = 1\n", os.cpu_count() == 1),
    ],
)
def test_a_config_file_fleet_takes_the_standbys_that_suit_it(
    tmp_path: Path, config: str, standby: bool
) -> None:
    """The config file is read after the standbys started: a fleet of one 1-thread
    worker takes one of them; a worker of every core (threads = cores) takes none, as
    their libraries sized their thread pools for 1 thread. The others go."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(config)
    run_cli("-o", str(tmp_path / "out"), "--format", "txt", home=home)
    [log] = worker_logs(home)
    assert log.startswith("standby worker: ready ") is standby


def test_a_fleet_set_on_the_command_line_is_started_as_standby(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_cli("-o", str(tmp_path / "out"), "--format", "txt", "-w", "1", "--threads", "1", home=home)
    [log] = worker_logs(home)
    assert log.startswith("standby worker: ready ")


def test_the_entry_point_freezes_its_objects_before_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's last collections then skip what the imports made (launch.main)."""
    monkeypatch.setattr(sys, "argv", ["whisperfarm", "status"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit):
            main()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_standby_whose_imports_fail_says_why_in_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a worker started afresh would: a standby's own output goes nowhere until its
    order names its log."""
    broken = tmp_path / "site" / "faster_whisper"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libctranslate2.so: cannot open')\n")
    monkeypatch.setenv("PYTHONPATH", f"{broken.parent}{os.pathsep}{REPO}")
    standby = StandbyWorkers.start(1, 1)
    log = tmp_path / "worker-0.log"
    process = standby.take(1, StandbyOrder(env={}, log=str(log)))
    assert process is not None
    assert process.wait(timeout=TIMEOUT) == 1
    text = log.read_text()
    assert text.startswith("standby worker: ready ")
    assert "ImportError: libctranslate2.so: cannot open" in text
    standby.close()
