"""Standby workers (whisperfarm.spawn, whisperfarm.launch, worker.standby): a
``transcribe`` that leaves its local fleet at the default starts the workers' processes
before its own imports and hands them their orders when the run starts."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tests.support.paths import REPO
from whisperfarm.cli import app
from whisperfarm.launch import (
    LAYOUT_FLAGS,
    LAYOUT_VARIABLES,
    NO_STANDBY_FLAGS,
    main,
    standby_layout,
)
from whisperfarm.settings import Settings
from whisperfarm.spawn import StandbyWorkers, default_workers
from worker.standby import StandbyOrder

CLIP = REPO / "samples" / "real" / "sb-spk1_snt1.flac"  # "The child almost hurt the small dog."
TIMEOUT = 300


# Which command lines get standby workers --------------------------------------------------


def test_a_plain_transcribe_gets_the_default_local_fleet_as_standby() -> None:
    assert standby_layout(["transcribe", "a.mp3", "-m", "tiny.en"], {}, cpus=2) == (2, 1)
    assert standby_layout(["transcribe", "a.mp3"], {}, cpus=8) == default_workers(8) == (4, 2)


@pytest.mark.parametrize(
    ("args", "environ", "layout"),
    [
        (["--workers", "3"], {}, (3, 2)),  # 8 cores shared
        (["-w", "1", "--threads", "2"], {}, (1, 2)),
        (["-w3"], {}, (3, 2)),
        (["--workers=2", "--threads=1"], {}, (2, 1)),
        (["--workers", "1", "--workers", "2"], {}, (2, 4)),  # the last one counts
        ([], {"WHISPERFARM_WORKERS": "2"}, (2, 4)),
        (["--workers", "1"], {"WHISPERFARM_WORKERS": "2"}, (1, 8)),  # the flag first
        ([], {"WHISPERFARM_THREADS": "1"}, (4, 1)),
    ],
)
def test_the_layout_comes_from_the_flags_then_the_environment(
    args: list[str], environ: dict[str, str], layout: tuple[int, int]
) -> None:
    assert standby_layout(["transcribe", "a.mp3", *args], environ, cpus=8) == layout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["serve", "a.mp3"],
        ["worker", "--url", "http://x"],
        ["transcribe", "a.mp3", "-w", "0"],
        ["transcribe", "a.mp3", "--workers", "many"],
        ["transcribe", "a.mp3", "--threads"],
        ["transcribe", "a.mp3", "--backend", "fly"],
        ["transcribe", "a.mp3", "--backend=local"],
        ["transcribe", "a.mp3", "--dry-run"],
        ["transcribe", "--help"],
    ],
)
def test_no_standby_where_the_command_line_starts_no_local_fleet_or_is_wrong(
    argv: list[str],
) -> None:
    assert standby_layout(argv, {}, cpus=2) is None


def test_no_standby_where_the_environment_names_a_backend() -> None:
    assert standby_layout(["transcribe", "a.mp3"], {"WHISPERFARM_BACKEND": "fly"}) is None


def test_the_layout_flags_and_variables_are_transcribes_own() -> None:
    """A renamed flag or variable would start standby workers the run can't use."""
    transcribe = typer.main.get_command(app).commands["transcribe"]  # type: ignore[attr-defined]
    names = {opt for param in transcribe.params for opt in param.opts}
    flags = {flag for group in LAYOUT_FLAGS.values() for flag in group}
    assert flags | set(NO_STANDBY_FLAGS) <= names | {"--help"}
    fields = Settings.model_fields
    for field, variable in LAYOUT_VARIABLES.items():
        assert field in fields and variable == f"WHISPERFARM_{field.upper()}"
    assert "backend" in fields


# The processes ----------------------------------------------------------------------------


def test_a_standby_worker_exits_quietly_when_no_order_comes() -> None:
    standby = StandbyWorkers.start(1, 1)
    [process] = standby.processes
    standby.dismiss()
    assert process.wait(timeout=TIMEOUT) == 0
    standby.close()


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
    assert all(log.startswith("standby worker: ready ") for log in logs), logs


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
