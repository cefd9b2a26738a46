"""The fleet commands: ``machines``, ``machines reap``, ``cost`` and ``serve``.

CliRunner for the commands themselves; one real-process test runs ``serve`` with a remote
worker joining by the command it prints.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from tests.fakefly import create_app
from tests.support.clock import FakeClock
from tests.support.in_process import BASE_URL, in_process
from tests.support.paths import REPO, SAMPLE, SAMPLE_TEXT
from whisperfarm.cli import app
from whisperfarm.cli.root import out
from whisperfarm.errors import FlyError
from whisperfarm.evaluation import word_error_rate
from whisperfarm.fly import config as fly_config_module
from whisperfarm.fly.client import MachinesClient, build_worker_config
from whisperfarm.fly.pool import as_pool_config
from whisperfarm.fly.store import MachineStore
from whisperfarm.ledger import ChunkPlan, Ledger

runner = CliRunner()
APP = "wf-test"
TOKEN = "fake-token"


pytestmark = pytest.mark.usefixtures("no_fly_env")


@pytest.fixture(autouse=True)
def wide_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables on one line per row, whatever the terminal the tests run in. (Patching the
    ``width`` property would "restore" it to a fixed 80 columns for every later test.)"""
    monkeypatch.setattr(out, "_width", 200)


@pytest.fixture
def clock() -> FakeClock:
    """The ledger's clock: times from a little while ago, so ages and costs of ended
    machines (which the CLI reads against the real time) are exact."""
    return FakeClock(time.time() - 500)


def record(ledger: Ledger, machine_id: str, run_id: str = "r1", price: float = 0.001) -> None:
    MachineStore(ledger).record_machine(
        machine_id=machine_id,
        run_id=run_id,
        name=f"wf-{run_id}-{machine_id}",
        app=APP,
        region="ord",
        size="performance-2x",
        cpus=2,
        memory_mb=4096,
        usd_per_second=price,
        state="started",
    )


def queue_episode(ledger: Ledger, episode_id: str, name: str, chunks: int) -> None:
    ledger.create_episode(
        episode_id=episode_id,
        name=name,
        source=f"/nowhere/{name}.mp3",
        content_hash=episode_id,
        model="tiny.en",
        options={},
    )
    for idx in range(chunks):
        plan = ChunkPlan(idx, idx * 25.0, idx * 25.0 + 25, idx * 25.0, idx * 25.0 + 25)
        ledger.add_chunk(episode_id, plan, f"/nowhere/{idx}.wav")
    ledger.finish_chunking(episode_id, duration=chunks * 25.0, chunk_count=chunks)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- machines ----------------------------------------------------------------------------------


def test_machines_with_an_empty_ledger_says_so_in_one_line() -> None:
    result = runner.invoke(app, ["machines"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "no machines started yet (runs with --backend fly start them)"
    ]


def test_machines_lists_ids_states_and_costs(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    record(ledger, "m-ended")
    clock.advance(100.0)
    MachineStore(ledger).update_machine("m-ended", state="destroyed")
    record(ledger, "m-running")
    result = runner.invoke(app, ["machines"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    ended = next(line for line in lines if "m-ended" in line)
    running = next(line for line in lines if "m-running" in line)
    assert ended.split() == [
        "m-ended", "r1", "destroyed", "performance-2x", "ord", "1m40s", "$0.1000",
    ]  # fmt: skip
    assert running.split()[:5] == ["m-running", "r1", "started", "performance-2x", "ord"]
    # Still billing: about 400 s at $0.001/s so far.
    assert 0.39 <= float(running.split()[-1].lstrip("$")) <= 0.5
    assert "1 not known to be destroyed: 'whisperfarm machines reap'" in result.output


# -- machines reap -----------------------------------------------------------------------------


def test_reap_without_an_app_is_one_line_naming_the_fix() -> None:
    result = runner.invoke(app, ["machines", "reap"])
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "FLY_APP" in line and "--app" in line
    assert "Traceback" not in result.output


def test_reap_without_a_token_is_one_line_naming_the_fix() -> None:
    result = runner.invoke(app, ["machines", "reap", "--app", APP])
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "FLY_API_TOKEN" in line


# -- machines check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fix"),
    [
        ([], 2, "FLY_APP"),
        (["--app", APP], 2, "--advertise-url"),
        (["--app", APP, "--advertise-url", "http://10.0.0.5:8765"], 1, "FLY_API_TOKEN"),
        (["--app", APP, "--advertise-url", "http://x:1", "--reach-timeout", "0"], 2, "reach"),
    ],
    ids=["no-app", "no-url", "no-token", "bad-timeout"],
)
def test_machines_check_misconfigured_is_one_line_naming_the_fix(
    args: list[str], code: int, fix: str, home: Path
) -> None:
    result = runner.invoke(app, ["machines", "check", *args])
    assert result.exit_code == code, result.output
    (line,) = error_lines(result.output)
    assert fix in line
    assert "Traceback" not in result.output
    assert not (home / "ledger.db").exists(), "nothing started, nothing recorded"


@pytest.fixture
def fake_fly(monkeypatch: pytest.MonkeyPatch) -> Iterator[MachinesClient]:
    """The CLI's Fly client, talking to the fake in-process."""
    fake = TestClient(create_app(app=APP, token=TOKEN, tick_interval=None, rate_limit=False))
    http = in_process(fake)
    client = MachinesClient(APP, TOKEN, base_url=BASE_URL, http=http, max_attempts=1)
    monkeypatch.setattr(fly_config_module, "fly_client", lambda settings: client)
    yield client
    http.close()


def test_reap_destroys_what_a_crashed_run_left(
    ledger: Ledger, fake_fly: MachinesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_worker_config(
        image="registry.fly.io/wf-test:v1",
        size="performance-2x",
        env={},
        run_id="r1",
        machine_name="wf-r1-1",
        model="tiny.en",
    )
    machine = fake_fly.create(config, name="wf-r1-1")
    ledger.start_run("r1", backend="fly", episode_ids=[], pid=None)
    MachineStore(ledger).record_machine(
        machine_id=machine.id,
        run_id="r1",
        name="wf-r1-1",
        app=APP,
        region="ord",
        size="performance-2x",
        cpus=2,
        memory_mb=4096,
        usd_per_second=0.001,
        state="started",
    )
    monkeypatch.setenv("FLY_APP", APP)
    result = runner.invoke(app, ["machines", "reap"])
    assert result.exit_code == 0, result.output
    assert f"destroyed 1 machine(s): {machine.id}" in result.output
    assert [m.id for m in fake_fly.list()] == []
    assert [row["state"] for row in MachineStore(ledger).machines()] == ["destroyed"]


def test_reap_says_stop_when_a_stop_failed(
    ledger: Ledger, fake_fly: MachinesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_worker_config(
        image="registry.fly.io/wf-test:v1",
        size="performance-2x",
        env={},
        run_id="dead",
        machine_name="wf-pool-001",
        model="tiny.en",
    )
    machine = fake_fly.create(as_pool_config(config), name="wf-pool-001")  # left running
    ledger.start_run("dead", backend="fly", episode_ids=[], pid=None)

    def stop(machine_id: str, **kwargs: Any) -> None:
        raise FlyError("HTTP 412: no")

    monkeypatch.setattr(fake_fly, "stop", stop)
    monkeypatch.setenv("FLY_APP", APP)
    result = runner.invoke(app, ["machines", "reap"])
    assert result.exit_code == 1
    assert error_lines(result.output) == [f"error: could not stop {machine.id}; try again"]


def test_the_pool_help_says_what_reap_destroys_and_how_to_change_the_image() -> None:
    reap_help = " ".join(runner.invoke(app, ["machines", "reap", "--help"]).output.split())
    assert "left running by runs that are over" in reap_help
    warm_help = " ".join(runner.invoke(app, ["machines", "warm", "--help"]).output.split())
    assert "--image-label v2" in warm_help and "registry.fly.io/APP:v2" in warm_help
    assert "run it again after deploying a new image" not in warm_help
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "Run it again after deploying a new image" not in readme
    assert "--image-label v2" in readme


# -- machines warm -----------------------------------------------------------------------------


def test_check_without_an_app_names_no_flag_it_was_not_given() -> None:
    """'machines check' said '--backend fly needs the worker app' to one who gave none."""
    result = runner.invoke(app, ["machines", "check"])
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "FLY_APP" in line and "--app" in line
    assert "--backend" not in line


def test_warm_without_an_app_is_one_line_naming_the_fix() -> None:
    result = runner.invoke(app, ["machines", "warm", "3"])
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "FLY_APP" in line and "--app" in line
    assert "Traceback" not in result.output


def test_warm_refuses_a_negative_count() -> None:
    result = runner.invoke(app, ["machines", "warm", "--app", APP, "--", "-1"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_warm_says_what_the_pool_costs_and_machines_lists_it(
    fake_fly: MachinesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLY_APP", APP)
    result = runner.invoke(
        app, ["machines", "warm", "3", "-m", "small.en", "--region", "ams", "--rootfs-gb", "1.5"]
    )
    assert result.exit_code == 0, result.output
    assert "3 stopped × performance-4x" in result.output  # small.en's default size
    assert "created 3, kept 0, destroyed 0" in result.output
    assert "no CPU or RAM" in result.output
    assert "$0.67 a month (3 × 1.5 GB root filesystem × $0.15/GB-month" in result.output
    assert "estimate" in result.output
    machines = fake_fly.list()
    assert [m.state for m in machines] == ["created"] * 3
    assert {m.region for m in machines} == {"ams"}
    assert all(m.metadata["whisperfarm_pool"] == "warm" for m in machines)

    listing = runner.invoke(app, ["machines"])
    assert listing.exit_code == 0, listing.output
    assert "warm pool (3, states as last seen)" in listing.output
    assert sum(1 for line in listing.output.splitlines() if "wf-pool-00" in line) == 3
    assert "3 stopped: no CPU or RAM billed" in listing.output

    reaped = runner.invoke(app, ["machines", "reap"])
    assert reaped.exit_code == 0, reaped.output
    assert "destroyed 0 machine(s)" in reaped.output
    assert "left the warm pool's 3 stopped machine(s) alone (--pool" in reaped.output
    assert len(fake_fly.list()) == 3
    reaped = runner.invoke(app, ["machines", "reap", "--pool"])
    assert reaped.exit_code == 0, reaped.output
    assert "destroyed 3 machine(s)" in reaped.output
    assert fake_fly.list() == []
    assert "no machines started yet" in runner.invoke(app, ["machines"]).output


def test_warm_0_destroys_the_pool(
    fake_fly: MachinesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLY_APP", APP)
    assert runner.invoke(app, ["machines", "warm", "2"]).exit_code == 0
    result = runner.invoke(app, ["machines", "warm", "0"])
    assert result.exit_code == 0, result.output
    assert "0 stopped" in result.output and "destroyed 2" in result.output
    assert "nothing stopped is left to bill" in result.output
    assert fake_fly.list() == []


# -- cost --------------------------------------------------------------------------------------


def test_cost_with_no_runs() -> None:
    result = runner.invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no runs yet"


def test_cost_shows_each_run_and_its_episodes_share(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    queue_episode(ledger, "e1", "interview", chunks=12)  # 300 s
    queue_episode(ledger, "e2", "trailer", chunks=4)  # 100 s
    ledger.start_run("run-abc", backend="fly", episode_ids=["e1", "e2"], budget=2.0)
    record(ledger, "m1", run_id="run-abc")
    clock.advance(150.0)
    MachineStore(ledger).update_machine("m1", state="destroyed")
    ledger.end_run("run-abc", "done")
    result = runner.invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    run_line = next(line for line in result.output.splitlines() if "run-abc" in line)
    assert run_line.split()[3:] == ["fly", "done", "1", "2m30s", "$0.1500", "$2.00"]
    assert "interview" in result.output and "$0.1125" in result.output
    assert "trailer" in result.output and "$0.0375" in result.output
    assert "total $0.1500" in result.output


# -- serve -------------------------------------------------------------------------------------


def test_serve_with_nothing_to_serve_says_so() -> None:
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "nothing to serve" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("given", ["http://127.0.0.1:8731/ep1.mp3", "-"])
def test_serve_of_a_url_or_standard_input_names_the_command_that_serves_it(given: str) -> None:
    """A URL was taken for a path ('http:/127.0.0.1:8731/ep1.mp3: no such file')."""
    result = runner.invoke(app, ["serve", given, "-m", "tiny.en"])
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert f"serve takes files, not {given}" in line
    assert f"whisperfarm transcribe {given} --workers 0" in line
    assert "Traceback" not in result.output


def test_serve_finishes_with_a_worker_that_joins_by_the_printed_command(tmp_path: Path) -> None:
    home, out_dir = tmp_path / "home", tmp_path / "out"
    env = {**os.environ, "WHISPERFARM_HOME": str(home)}
    with (tmp_path / "serve.err").open("w") as serve_err:
        command = ["serve", str(SAMPLE), "--model", "tiny.en", "--out", str(out_dir)]
        serve = subprocess.Popen(
            [sys.executable, "-m", "whisperfarm", *command, "--format", "txt"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=serve_err,
            text=True,
        )
        try:
            assert serve.stdout is not None
            join: list[str] = []
            for line in serve.stdout:
                if "whisperfarm worker --url" in line:
                    join = line.split("whisperfarm worker", 1)[1].split()
                    break
            assert join, "serve prints the command that joins a worker"
            assert join[0] == "--url" and join[2] == "--token", join
            # Keep reading so a chatty serve never blocks on a full pipe.
            rest: list[str] = []
            drain = threading.Thread(target=lambda: rest.extend(serve.stdout or []), daemon=True)
            drain.start()
            worker = subprocess.run(
                [sys.executable, "-m", "whisperfarm", "worker", *join],
                env={**env, "WHISPERFARM_MODEL": "tiny.en"},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert worker.returncode == 0, worker.stderr
            assert serve.wait(timeout=60) == 0, (tmp_path / "serve.err").read_text()
            drain.join(timeout=10)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
            if serve.stdout is not None:
                serve.stdout.close()
    text = (out_dir / "episode.txt").read_text()
    assert word_error_rate(SAMPLE_TEXT.read_text(), text) <= 0.03
    with sqlite3.connect(home / "ledger.db") as conn:
        rows: list[Any] = conn.execute("SELECT kind, chunks_done FROM workers").fetchall()
        episodes = conn.execute("SELECT state FROM episodes").fetchall()
    assert len(rows) == 1 and rows[0][0] == "remote" and rows[0][1] > 0
    assert episodes == [("done",)]


def test_a_fly_run_that_cannot_reach_the_api_fails_before_cutting_anything(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    """No network to Fly used to mean minutes of a fleet backing off (fly_give_up_seconds)
    after the audio was cut; now one List before anything starts fails in one line."""
    client = MachinesClient(
        APP, TOKEN, base_url="http://127.0.0.1:9", max_attempts=2, sleep=lambda _: None
    )
    monkeypatch.setattr(fly_config_module, "fly_client", lambda settings: client)
    monkeypatch.setenv("FLY_API_TOKEN", TOKEN)
    command = [
        *("transcribe", str(SAMPLE), "--model", "tiny.en", "--backend", "fly", "--app", APP),
        *("--advertise-url", "http://127.0.0.1:8765", "--yes", "--out", str(home / "out")),
    ]
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result.output)
    assert "can't use Fly's Machines API" in line and "network" in line
    assert "Traceback" not in result.output
    if (home / "ledger.db").exists():
        ledger = Ledger(home / "ledger.db")
        try:
            assert ledger.episodes() == [], "no audio was cut"
        finally:
            ledger.close()
    assert not (home / "out").exists()


# -- ledgers closed ------------------------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Ledger]:
    """Every Ledger opened from now on, to check the commands close them."""
    ledgers: list[Ledger] = []
    init = Ledger.__init__

    def recording_init(self: Ledger, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        ledgers.append(self)

    monkeypatch.setattr(Ledger, "__init__", recording_init)
    return ledgers


def _closed(ledger: Ledger) -> bool:
    try:
        ledger.conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_the_fleet_commands_close_every_ledger_they_open(
    fake_fly: MachinesClient, opened: list[Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLY_APP", APP)
    for command in (["machines", "warm", "1"], ["machines"], ["machines", "reap"], ["cost"]):
        before = len(opened)
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert len(opened) > before, f"{command} opened no ledger"
        assert all(_closed(ledger) for ledger in opened), f"{command} left a ledger open"


def test_cost_sums_up_runs_without_machines_in_one_line(ledger: Ledger) -> None:
    """Local runs cost nothing: one line counts them, instead of a row of $0.0000 for each
    run and each of its episodes."""
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    for n in range(3):
        queue_episode(ledger, f"l{n}", f"local-{n}", chunks=2)
        ledger.start_run(f"run-local-{n}", backend="local", episode_ids=[f"l{n}"])
        ledger.end_run(f"run-local-{n}", "done")
    queue_episode(ledger, "e1", "interview", chunks=4)
    ledger.start_run("run-fly", backend="fly", episode_ids=["e1"])
    record(ledger, "m1", run_id="run-fly")
    clock.advance(100.0)
    MachineStore(ledger).update_machine("m1", state="destroyed")
    ledger.end_run("run-fly", "done")
    result = runner.invoke(app, ["cost"])
    assert result.exit_code == 0, result.output
    assert "3 run(s) without machines (local or joined workers): $0" in result.output
    assert "run-local" not in result.output and "local-0" not in result.output
    assert "$0.0000" not in result.output
    assert "run-fly" in result.output and "total $0.1000" in result.output
