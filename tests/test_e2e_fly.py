"""End to end on the Fly backend: the real CLI against the fake Machines API
(tests/fakefly), which runs a real `python -m worker` process for every started machine
with the machine's config.env, as Fly would run the image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakefly.process import FakeFlyProcess
from tests.support import ledger_db
from tests.support.fly_runs import APP, assert_all_destroyed, billed, fly_args, free_port
from tests.support.ledger_db import DONE_WITH_RESULTS
from tests.support.paths import SAMPLE, SAMPLE_TEXT
from whisperfarm.evaluation import word_error_rate
from whisperfarm.fly.pricing import SIZES
from whisperfarm.media import ffmpeg_exe

TIMEOUT = 300
TOKEN = "fake-token"


def start_fake_fly(tmp: Path, *flags: str) -> FakeFlyProcess:
    return FakeFlyProcess(tmp, *flags, token=TOKEN, app=APP)


@pytest.fixture
def fake(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FakeFlyProcess]:
    flags = getattr(request, "param", ())
    fly = start_fake_fly(tmp_path, *flags)
    yield fly
    fly.close()


def fly_env(tmp_path: Path, fake: FakeFlyProcess, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "WHISPERFARM_HOME": str(tmp_path / "home"),
        "WHISPERFARM_FLY_API_URL": fake.url,
        "FLY_API_TOKEN": TOKEN,
        "FLY_APP": APP,
        "WHISPERFARM_FLY_POLL_SECONDS": "0.5",
        "WHISPERFARM_FLY_START_LATENCY": "2",
        "WHISPERFARM_FLY_STOP_MARGIN": "2",
        "WHISPERFARM_FLY_WORKER_GIVE_UP_SECONDS": "10",
        **extra,
    }


def run_fly(
    tmp_path: Path, fake: FakeFlyProcess, *extra: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``whisperfarm transcribe --backend fly`` on the sample against the fake, to the end."""
    return subprocess.run(
        fly_args(tmp_path, *extra),
        env=fly_env(tmp_path, fake, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_fly_run_transcribes_within_machine_and_budget_caps(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    budget = 0.05
    result = run_fly(tmp_path, fake, "--max-machines", "2", "--budget", str(budget))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plan:" in result.stdout
    text = (tmp_path / "out" / "episode.txt").read_text()
    assert word_error_rate(SAMPLE_TEXT.read_text(), text) <= 0.03

    state = fake.state()
    assert_all_destroyed(state)
    assert state["max_concurrent_active"] <= 2
    price = SIZES["performance-2x"].usd_per_second
    assert billed(state, price) <= budget
    spent = ledger_db.rows(tmp_path / "home", "SELECT spent, budget, max_machines FROM runs")[0]
    assert 0 < spent[0] <= budget and spent[1] == budget and spent[2] == 2
    for machine in state["machines"]:
        config = machine["config"]
        assert config["restart"] == {"policy": "no"} and config["auto_destroy"] is True
        assert config["guest"]["cpu_kind"] == "performance"
        assert config["env"]["WHISPERFARM_MODEL"] == "tiny.en"
        assert config["metadata"]["managed_by"] == "whisperfarm"
    names = [m["name"] for m in state["machines"]]
    assert len(names) == len(set(names))
    workers = ledger_db.rows(
        tmp_path / "home", "SELECT kind, sum(chunks_done) FROM workers GROUP BY kind"
    )
    assert workers[0][0] == "fly" and workers[0][1] >= 1


def three_samples(tmp_path: Path) -> Path:
    """The sample three times over (12 minutes, 30 chunks): more machine time than any
    machine fast enough to run these tests spends in 7 s."""
    audio = tmp_path / "episode-x3.mp3"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-stream_loop",
            "2",
            "-i",
            str(SAMPLE),
            "-c",
            "copy",
            str(audio),
        ],
        check=True,
    )
    return audio


def test_budget_cap_stops_machines_and_leaves_the_episode_resumable(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    # Machines cost a tenth of a cent a second: the budget pays for 7 s of the machine,
    # a part of the work only (the whole took it 30 s here).
    prices = json.dumps({"performance-2x": 0.001})
    env = fly_env(tmp_path, fake, WHISPERFARM_PRICES=prices)
    audio = three_samples(tmp_path)
    budget = 0.007
    result = subprocess.run(
        fly_args(tmp_path, "--max-machines", "1", "--budget", str(budget), audio=audio),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "budget $0.01 reached" in result.stderr
    assert "larger --budget" in result.stderr
    assert "Traceback" not in result.stderr
    state = fake.state()
    assert_all_destroyed(state)
    assert billed(state, 0.001) <= budget
    assert ledger_db.rows(tmp_path / "home", "SELECT spent FROM runs")[0][0] <= budget
    done_before = {idx: rest for idx, *rest in ledger_db.rows(tmp_path / "home", DONE_WITH_RESULTS)}
    assert not (tmp_path / "out" / "episode-x3.txt").exists()

    rerun = subprocess.run(
        fly_args(tmp_path, "--max-machines", "2", "--budget", "1", audio=audio),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert rerun.returncode == 0, rerun.stderr
    after = {idx: rest for idx, *rest in ledger_db.rows(tmp_path / "home", DONE_WITH_RESULTS)}
    assert all(after[idx] == kept for idx, kept in done_before.items()), "a chunk was redone"
    assert (tmp_path / "out" / "episode-x3.txt").exists()
    assert_all_destroyed(fake.state())


def interrupt_once_a_machine_runs(
    tmp_path: Path, fake: FakeFlyProcess, signum: int = signal.SIGINT
) -> str:
    """A Fly run on two machines, Ctrl-C'd (or sent ``signum``) two seconds after a machine
    has started; its stderr."""
    process = subprocess.Popen(
        fly_args(tmp_path, "--max-machines", "2"),
        env=fly_env(tmp_path, fake),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if any(m["state"] == "started" for m in fake.state()["machines"]):
            break
    time.sleep(2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    return stderr


@pytest.mark.parametrize(
    ("signum", "label"),
    [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP")],
    ids=["ctrl-c", "SIGTERM", "SIGHUP"],
)
def test_ctrl_c_sigterm_and_sighup_destroy_every_machine(
    tmp_path: Path, fake: FakeFlyProcess, signum: int, label: str
) -> None:
    """A kill, a service stop or a closed terminal ends the run as Ctrl-C does: by the
    time the CLI has exited, every machine it made is destroyed, and it says so."""
    stderr = interrupt_once_a_machine_runs(tmp_path, fake, signum)
    assert_all_destroyed(fake.state())  # now, not once the workers give up on their own
    rows = ledger_db.rows(tmp_path / "home", "SELECT state, destroyed_at FROM machines")
    assert rows and all(state == "destroyed" and at for state, at in rows)
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"error: stopped by {label} with " in line
    destroyed = f"destroyed {len(rows)} Fly machine{'s' if len(rows) != 1 else ''}"
    assert f": {destroyed}; run the same command again to resume" in line
    assert ledger_db.rows(tmp_path / "home", "SELECT state FROM runs") == [("interrupted",)]


@pytest.mark.parametrize(
    "fake",
    [("--capacity-409", "2", "--capacity-412", "1", "--server-errors", "3", "--create-408", "1")],
    indirect=True,
)
def test_api_faults_do_not_break_the_run(tmp_path: Path, fake: FakeFlyProcess) -> None:
    result = run_fly(tmp_path, fake, "--max-machines", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    state = fake.state()
    assert_all_destroyed(state)
    assert state["max_concurrent_active"] <= 3
    names = [m["name"] for m in state["machines"]]
    assert len(names) == len(set(names)), "a retried create made a second machine"
    assert (tmp_path / "out" / "episode.txt").exists()


@pytest.mark.parametrize("fake", [("--die", "1", "--die-after", "1.5")], indirect=True)
def test_a_machine_dying_mid_run_loses_no_chunk(tmp_path: Path, fake: FakeFlyProcess) -> None:
    result = run_fly(tmp_path, fake, "--max-machines", "2", WHISPERFARM_LEASE_SECONDS="3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_destroyed(fake.state())
    text = (tmp_path / "out" / "episode.txt").read_text()
    assert word_error_rate(SAMPLE_TEXT.read_text(), text) <= 0.03


@pytest.mark.parametrize("fake", [("--unreachable", "all")], indirect=True)
def test_a_run_whose_machines_cant_reach_the_coordinator_stops_and_leaves_none(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    """Every machine's network is cut off from the laptop: the first machine's worker
    never claims, so after the reach timeout the run destroys it and stops, naming the
    advertised URL and the fixes. The worker would retry for 60 s: the fleet does not
    wait for it to give up."""
    started = time.monotonic()
    result = run_fly(
        tmp_path,
        fake,
        "--max-machines",
        "3",
        "--reach-timeout",
        "8",
        WHISPERFARM_FLY_WORKER_GIVE_UP_SECONDS="60",
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    (url,) = ledger_db.rows(tmp_path / "home", "SELECT url FROM runs")[
        0
    ]  # = --advertise-url, in this test
    assert f"first Fly machine never reached this coordinator at {url} " in error
    assert "--host ::" in error and "--advertise-url" in error and "machines check" in error
    state = fake.state()
    assert len(state["machines"]) == 1, "more machines than the probe"
    assert state["machines"][0]["unreachable"]
    assert_all_destroyed(state)
    assert state["machines"][0]["exit_code"] != 3, "the worker gave up before the fleet did"
    assert took < TIMEOUT
    rows = ledger_db.rows(tmp_path / "home", "SELECT state, error FROM machines")
    assert [row[0] for row in rows] == ["destroyed"]
    assert "never reached the coordinator" in rows[0][1]
    assert ledger_db.rows(tmp_path / "home", "SELECT state FROM runs") == [("failed",)]
    assert ledger_db.rows(tmp_path / "home", "SELECT count(*) FROM workers") == [(0,)]
    assert (
        ledger_db.rows(tmp_path / "home", "SELECT count(*) FROM chunks WHERE state = 'queued'")[0][
            0
        ]
        > 0
    )


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (("--gpu",), {}, "no longer offers GPU"),
        (("--machine-size", "a100-40gb"), {}, "no longer offers GPU"),
        ((), {"FLY_API_TOKEN": "wrong"}, "token"),
        ((), {"FLY_APP": ""}, "FLY_APP"),
    ],
    ids=["gpu-flag", "gpu-size", "bad-token", "no-app"],
)
def test_fly_misconfiguration_fails_fast_with_one_line(
    tmp_path: Path, fake: FakeFlyProcess, flags: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_fly(tmp_path, fake, *flags, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert fake.state()["machines"] == []


def test_dry_run_plans_without_calling_fly(tmp_path: Path, fake: FakeFlyProcess) -> None:
    result = run_fly(tmp_path, fake, "--dry-run", "--max-machines", "20", "--budget", "0.5")
    assert result.returncode == 0, result.stderr
    assert "plan:" in result.stdout and "$" in result.stdout
    state = fake.state()
    assert state["machines"] == [] and not any(state["requests"].values())
    assert not (tmp_path / "home" / "ledger.db").exists()


# -- machines check ----------------------------------------------------------------------------


def machines_check(
    tmp_path: Path, fake: FakeFlyProcess, *extra: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result = whisperfarm(
        tmp_path, fake, "machines", "check", "-m", "tiny.en", "--port", str(port),
        "--advertise-url", url, *extra,
    )  # fmt: skip
    return result, url


def verdict_lines(stdout: str) -> dict[str, str]:
    lines = [line.split(None, 2) for line in stdout.splitlines()]
    return {parts[1]: parts[0] for parts in lines if parts and parts[0] in ("ok", "FAIL")}


def test_machines_check_makes_a_round_trip_from_one_machine_and_destroys_it(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    result, url = machines_check(tmp_path, fake)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdict_lines(result.stdout) == dict.fromkeys(
        ["token", "app", "image", "reach", "cleanup"], "ok"
    )
    assert f"reached this coordinator at {url}" in result.stdout
    assert "all checks passed" in result.stdout and "cost $0.0" in result.stdout
    state = fake.state()
    assert len(state["machines"]) == 1
    assert_all_destroyed(state)
    # The worker really came over HTTP: the coordinator recorded its claim.
    (machine_id,) = [m["id"] for m in state["machines"]]
    assert ledger_db.rows(tmp_path / "home", "SELECT id, kind FROM workers") == [
        (machine_id, "fly")
    ]
    assert ledger_db.rows(tmp_path / "home", "SELECT backend, state FROM runs") == [
        ("check", "done")
    ]
    assert ledger_db.rows(tmp_path / "home", "SELECT state FROM machines") == [("destroyed",)]


@pytest.mark.parametrize("fake", [("--unreachable", "all")], indirect=True)
def test_machines_check_says_when_machines_cant_reach_the_coordinator(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    result, url = machines_check(tmp_path, fake, "--reach-timeout", "8")
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict_lines(result.stdout) == {
        "token": "ok", "app": "ok", "image": "ok", "reach": "FAIL", "cleanup": "ok",
    }  # fmt: skip
    (reach,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert f"can't reach this coordinator at {url} (no claim within 8s)" in reach
    assert "WireGuard" in reach and "--host ::" in reach
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "the reach check failed" in error
    assert_all_destroyed(fake.state())
    assert ledger_db.rows(tmp_path / "home", "SELECT count(*) FROM workers") == [(0,)]
    assert ledger_db.rows(tmp_path / "home", "SELECT backend, state FROM runs") == [
        ("check", "failed")
    ]


# -- the warm pool -----------------------------------------------------------------------------


def whisperfarm(tmp_path: Path, fake: FakeFlyProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisperfarm", *args],
        env=fly_env(tmp_path, fake),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def started_billed(state: dict[str, Any], price: float) -> float:
    """What Fly bills, from the fake's histories: each start (or launching create) until
    the machine is next stopped or destroyed; a stopped machine bills no compute."""
    total = 0.0
    for machine in state["machines"]:
        since = None
        for entry in machine["history"]:
            if entry["state"] == "starting" and since is None:
                since = entry["at"]
            elif entry["state"] in ("stopped", "destroying", "destroyed") and since is not None:
                total += (entry["at"] - since) * price
                since = None
        assert since is None, f"machine {machine['id']} still bills"
    return total


def pool_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in state["machines"] if m["config"]["metadata"].get("whisperfarm_pool")]


WARM = ("--warm-start-latency", "0.2")


@pytest.mark.parametrize("fake", [WARM], indirect=True)
def test_a_warm_pool_serves_the_run_goes_back_stopped_and_warm_0_destroys_it(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    warmed = whisperfarm(tmp_path, fake, "machines", "warm", "2", "--model", "tiny.en")
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert "2 stopped × performance-2x" in warmed.stdout
    assert "no CPU or RAM" in warmed.stdout and "$0.60 a month" in warmed.stdout
    assert "estimate" in warmed.stdout
    before = fake.state()
    assert [m["state"] for m in before["machines"]] == ["created", "created"]
    pool_ids = sorted(m["id"] for m in before["machines"])

    budget = 0.05
    result = run_fly(tmp_path, fake, "--max-machines", "2", "--budget", str(budget))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to 2 × performance-2x, 2 from the warm pool" in result.stdout  # the plan
    text = (tmp_path / "out" / "episode.txt").read_text()
    assert word_error_rate(SAMPLE_TEXT.read_text(), text) <= 0.03

    state = fake.state()
    assert sorted(m["id"] for m in state["machines"]) == pool_ids  # none created by the run
    assert state["requests"]["create"] == 2
    assert state["requests"]["update"] >= 2 and state["requests"]["start"] >= 2
    assert {m["state"] for m in state["machines"]} == {"stopped"}  # back in the pool
    assert state["started_now"] == 0
    for machine in state["machines"]:
        assert "started" in [h["state"] for h in machine["history"]]
    price = SIZES["performance-2x"].usd_per_second
    assert started_billed(state, price) <= budget
    rows = ledger_db.rows(tmp_path / "home", "SELECT id, pool, state, stopped_at FROM machines")
    assert sorted(row[0] for row in rows) == pool_ids
    assert all(pool == 1 and st == "stopped" and at for _, pool, st, at in rows)
    spent = ledger_db.rows(tmp_path / "home", "SELECT spent FROM runs")[0][0]
    assert 0 < spent <= budget
    run_id = ledger_db.rows(tmp_path / "home", "SELECT id FROM runs")[0][0]
    workers = ledger_db.rows(tmp_path / "home", "SELECT id, machine_id, chunks_done FROM workers")
    assert {w[0] for w in workers} <= {f"{m}-{run_id}" for m in pool_ids}
    assert sum(w[2] for w in workers) >= 1

    listing = whisperfarm(tmp_path, fake, "machines")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("(pool)") == 2 and "warm pool (2" in listing.stdout
    assert "not known to be destroyed" not in listing.stdout

    emptied = whisperfarm(tmp_path, fake, "machines", "warm", "0")
    assert emptied.returncode == 0, emptied.stdout + emptied.stderr
    assert "destroyed 2" in emptied.stdout
    assert {m["state"] for m in fake.state()["machines"]} == {"destroyed"}
    assert ledger_db.rows(tmp_path / "home", "SELECT count(*) FROM pool_machines")[0][0] == 0


@pytest.mark.parametrize("fake", [WARM], indirect=True)
def test_a_pool_smaller_than_max_machines_falls_back_to_creates(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    warmed = whisperfarm(tmp_path, fake, "machines", "warm", "1", "--model", "tiny.en")
    assert warmed.returncode == 0, warmed.stderr
    (pooled,) = [m["id"] for m in fake.state()["machines"]]
    budget = 0.05
    result = run_fly(tmp_path, fake, "--max-machines", "3", "--budget", str(budget))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "episode.txt").exists()
    state = fake.state()
    created = [m for m in state["machines"] if m["id"] != pooled]
    assert created, "the run made no machine of its own"
    assert state["requests"]["create"] == 1 + len(created) and len(created) <= 2
    assert {m["state"] for m in created} == {"destroyed"}
    assert [m["state"] for m in pool_of(state)] == ["stopped"]
    assert state["started_now"] == 0
    assert started_billed(state, SIZES["performance-2x"].usd_per_second) <= budget
    assert 0 < ledger_db.rows(tmp_path / "home", "SELECT spent FROM runs")[0][0] <= budget


@pytest.mark.parametrize("fake", [WARM], indirect=True)
def test_ctrl_c_leaves_pool_machines_stopped(tmp_path: Path, fake: FakeFlyProcess) -> None:
    warmed = whisperfarm(tmp_path, fake, "machines", "warm", "2", "--model", "tiny.en")
    assert warmed.returncode == 0, warmed.stderr
    interrupt_once_a_machine_runs(tmp_path, fake)
    state = fake.state()
    assert len(state["machines"]) == 2 and state["requests"]["create"] == 2
    # The ones the run started are stopped, back in the pool; one it had not started yet
    # (reachability first: one machine until its worker claims) was never started.
    used = {row[0] for row in ledger_db.rows(tmp_path / "home", "SELECT id FROM machines")}
    assert {m["state"] for m in state["machines"] if m["id"] in used} == {"stopped"}
    assert {m["state"] for m in state["machines"] if m["id"] not in used} <= {"created"}
    assert state["started_now"] == 0 and not any(m["running"] for m in state["machines"])
    rows = ledger_db.rows(tmp_path / "home", "SELECT state, stopped_at, destroyed_at FROM machines")
    assert rows and all(st == "stopped" and at and gone is None for st, at, gone in rows)


# -- Fly's List lags: absence is not destruction -----------------------------------------------


@pytest.mark.parametrize("fake", [("--list-lag", "3")], indirect=True)
def test_a_lagging_list_never_starts_more_than_max_machines_and_leaves_none(
    tmp_path: Path, fake: FakeFlyProcess
) -> None:
    result = run_fly(tmp_path, fake, "--max-machines", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    state = fake.state()
    left = [m["id"] for m in state["machines"] if m["state"] != "destroyed"]
    print(
        f"list lag 3 s, --max-machines 3: created {len(state['machines'])}, "
        f"at once {state['max_concurrent_started']} started / "
        f"{state['max_concurrent_active']} active, left {len(left)}, "
        f"requests {state['requests']}"
    )
    assert_all_destroyed(state)
    assert state["max_concurrent_started"] <= 3
    assert state["max_concurrent_active"] <= 3
    assert (tmp_path / "out" / "episode.txt").exists()
    rows = ledger_db.rows(tmp_path / "home", "SELECT state FROM machines")
    assert rows and {row[0] for row in rows} == {"destroyed"}
