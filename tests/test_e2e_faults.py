"""End to end, with faults: real CLI, coordinator and worker processes, the real tiny.en
model, and the fake Fly Machines API (tests/fakefly) as a process.

- A local worker killed with SIGKILL mid-chunk: its lease expires, another worker does the
  chunk, the transcript has every chunk once.
- The CLI (the coordinator) killed with SIGKILL mid-run: a joined worker gives up within a
  bounded time, and the rerun resumes without redoing finished chunks or losing any
  result a worker was told was stored.
- A chunk that fails every attempt: dead after ``max_attempts``, the episode fails naming
  it, the other chunks finish, and ``whisperfarm retry`` re-queues it.
- SIGTERM/SIGINT to a worker process: it hands its chunk back at once and exits 0; on Fly,
  stopping the machine does the same and the machine is destroyed.
- Fly machines that never start or die mid-run: the run still finishes within its budget,
  every machine destroyed; the Fly API token reaches no log, ledger, output or error, and
  the run token appears only in the lines printed for the user.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.fakefly.process import FakeFlyProcess
from tests.support.fly_runs import APP, assert_all_destroyed, billed, fly_args
from tests.support.ledger_db import DONE_WITH_RESULTS, integrity, rows
from tests.support.paths import REPO, SAMPLE, SAMPLE_TEXT
from whisperfarm.chunking import write_wav
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.evaluation import word_error_rate
from whisperfarm.fly.client import MachinesClient, build_worker_config
from whisperfarm.fly.pricing import SIZES
from whisperfarm.ledger import ChunkPlan, Ledger
from whisperfarm.media import SAMPLE_RATE, Decoder, ffmpeg_exe
from whisperfarm.server import BackgroundServer, bind

TIMEOUT = 300
WORKER_LOG = re.compile(r"^run-(.+)/worker-(\d+)\.log$")


# Helpers ------------------------------------------------------------------------------------


class Process:
    """A background command whose stdout and stderr go to files (never a full pipe)."""

    def __init__(self, args: list[str], env: dict[str, str], logs: Path, name: str):
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        self._files: list[IO[str]] = [open(self.out_path, "w"), open(self.err_path, "w")]  # noqa: SIM115
        self.process = subprocess.Popen(
            args,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1],
            text=True,
        )
        self.pid = self.process.pid

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is not None:
                for handle in self._files:
                    handle.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def join_command(self, timeout: float = 60) -> tuple[str, str]:
        """The (url, token) of the 'more workers: whisperfarm worker …' line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"whisperfarm worker --url (\S+) --token (\S+)", self.stdout)
            if found:
                return found.group(1), found.group(2)
            assert self.process.poll() is None, self.stdout + self.stderr
            time.sleep(0.1)
        raise AssertionError("no join line printed")


def whisperfarm(*args: str) -> list[str]:
    return [sys.executable, "-m", "whisperfarm", *args]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "WHISPERFARM_HOME": str(home), **extra}


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except sqlite3.OperationalError:  # no ledger, or no table yet
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def child_worker_pids(parent: int) -> dict[str, int]:
    """The worker processes ``parent`` started, by worker id (from /proc): a local worker's
    output goes to its log, logs/run-RUN/worker-N.log, and its id is local-RUN-N. (A
    standby worker gets its configuration on stdin, so its environment doesn't say.)"""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            log = Path(os.readlink(stat.parent / "fd" / "1"))
        except (OSError, IndexError, ValueError):
            continue
        match = WORKER_LOG.match(f"{log.parent.name}/{log.name}")
        if match:
            found[f"local-{match.group(1)}-{match.group(2)}"] = int(stat.parent.name)
    return found


def files_containing(secret: str, *roots: Path) -> list[Path]:
    needle = secret.encode()
    return [
        path
        for root in roots
        if root.exists()
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


def clip(source: Path, target: Path, seconds: float, *extra: str) -> Path:
    subprocess.run(
        [
            *(ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(source)),
            *("-t", str(seconds), *extra, str(target)),
        ],
        check=True,
        timeout=120,
    )
    return target


def wer(out: Path, name: str = "episode") -> float:
    return word_error_rate(SAMPLE_TEXT.read_text(), (out / f"{name}.txt").read_text())


def assert_run_token_only_printed(token: str, printed: str, *roots: Path) -> None:
    """The run token reaches the user (the join line and the page URL) and nothing else."""
    assert files_containing(token, *roots) == []
    lines = [line for line in printed.splitlines() if token in line]
    assert lines and all("--token" in line or "?token=" in line for line in lines), lines


# A worker killed mid-chunk ---------------------------------------------------------------------


def test_a_worker_killed_mid_chunk_loses_nothing(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    cli = Process(
        whisperfarm(
            *("transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "2", "--threads", "1"),
            *("--out", str(out), "--format", "txt,json"),
        ),
        env_for(home, WHISPERFARM_LEASE_SECONDS="3"),
        tmp_path,
        "cli",
    )
    try:

        def fresh_lease() -> tuple[str, int] | None:
            """A local worker that claimed a long chunk under half a second ago: it is
            sure to be still on it when the kill comes."""
            held = rows(
                home,
                "SELECT worker_id, id FROM chunks WHERE state = 'leased' AND end - start > 10"
                " AND worker_id LIKE 'local-%' AND claimed_at > ? ORDER BY claimed_at DESC",
                (time.time() - 0.5,),
            )
            return held[0] if held else None

        victim, _ = wait_for(fresh_lease, "a local worker to claim a chunk")
        pid = child_worker_pids(cli.pid)[victim]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        lost = rows(
            home, "SELECT id, idx FROM chunks WHERE state = 'leased' AND worker_id = ?", (victim,)
        )
        # its chunk, or its batch of them (local workers claim batches of 4 at most)
        assert 1 <= len(lost) <= 4, "the killed worker held its chunks"
        assert cli.wait() == 0, cli.stdout + cli.stderr
    finally:
        cli.kill()

    for chunk_id, _ in lost:
        state, attempt, worker, finished, has_result = rows(
            home,
            "SELECT state, attempt, worker_id, finished_at,"
            " EXISTS (SELECT 1 FROM results WHERE chunk_id = chunks.id) FROM chunks WHERE id = ?",
            (chunk_id,),
        )[0]
        assert (state, attempt) == ("done", 2), "done on a second attempt after the lease expired"
        assert worker != victim and finished > killed_at
        assert has_result

    speech = rows(home, "SELECT idx, state FROM chunks WHERE speech = 1 ORDER BY idx")
    assert {state for _, state in speech} == {"done"}
    assert rows(home, "SELECT count(*) FROM results")[0][0] == len(speech)
    # Every "stored" answer counts for its worker: more than the chunks is one stored twice.
    assert rows(home, "SELECT sum(chunks_done) FROM workers")[0][0] == len(speech)
    assert wer(out) <= 0.03
    assert integrity(home) == "ok"
    _, token = re.search(r"--url (\S+) --token (\S+)", cli.stdout).groups()  # type: ignore[union-attr]
    assert_run_token_only_printed(token, cli.stdout + cli.stderr, home, out)


# The coordinator killed mid-run ------------------------------------------------------------------


def test_a_killed_coordinator_is_given_up_on_then_resumed(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    args = whisperfarm("transcribe", str(SAMPLE), "-m", "tiny.en", "--out", str(out))
    cli = Process([*args, "--workers", "0"], env_for(home), tmp_path, "cli")
    give_up = 4.0
    try:
        url, token = cli.join_command()
        worker = Process(
            whisperfarm("worker", "--url", url, "--token", token, "--threads", "2"),
            env_for(
                home,
                WHISPERFARM_MODEL="tiny.en",
                WHISPERFARM_WORKER_ID="joined",
                WHISPERFARM_GIVE_UP_SECONDS=str(give_up),
            ),
            tmp_path,
            "worker",
        )
        try:
            wait_for(
                lambda: rows(home, "SELECT count(*) FROM chunks WHERE state = 'done'")[0][0] >= 3,
                "three chunks done",
            )
            os.kill(cli.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            code = worker.wait(timeout=120)
            gave_up_after = time.monotonic() - killed_at
        finally:
            worker.kill()
    finally:
        cli.kill()

    assert code == 3, worker.stderr  # EXIT_UNREACHABLE
    assert "unreachable" in worker.stderr and "Traceback" not in worker.stderr
    # Retrying for give_up seconds, after at most one chunk's transcription in flight.
    assert give_up <= gave_up_after < give_up + 20, gave_up_after
    assert integrity(home) == "ok"
    acknowledged = {
        (int(idx), int(attempt))
        for idx, attempt in re.findall(r"#(\d+) \(attempt (\d+)\): stored", worker.stderr)
    }
    assert acknowledged, worker.stderr
    before = {idx: rest for idx, *rest in rows(home, DONE_WITH_RESULTS)}
    for idx, attempt in acknowledged:
        assert before[idx][0] == attempt, "acknowledged, so stored"
    assert not out.exists() or not list(out.iterdir())

    rerun = subprocess.run(
        [*args, "--workers", "2"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = {idx: rest for idx, *rest in rows(home, DONE_WITH_RESULTS)}
    for idx, kept in before.items():
        assert after[idx] == kept, f"chunk {idx} was redone or lost"
    assert rows(home, "SELECT DISTINCT state FROM chunks") == [("done",)]
    assert rows(home, "SELECT state FROM runs ORDER BY started_at") == [("crashed",), ("done",)]
    assert wer(out) <= 0.03


# A chunk that fails every attempt ------------------------------------------------------------


def test_a_chunk_failing_every_attempt_goes_dead_and_retry_requeues_it(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    source = clip(SAMPLE, tmp_path / "short.mp3", 100)
    cli = Process(
        whisperfarm(
            "transcribe", str(source), "-m", "tiny.en", "--workers", "0", "--out", str(out)
        ),
        env_for(home, WHISPERFARM_MAX_ATTEMPTS="2"),
        tmp_path,
        "cli",
    )
    try:
        url, token = cli.join_command()
        wait_for(
            lambda: rows(home, "SELECT state FROM episodes")[0][0] == "queued", "chunking to end"
        )
        speech = rows(home, "SELECT idx, audio_path FROM chunks WHERE speech = 1 ORDER BY idx")
        assert len(speech) >= 3
        bad_idx, bad_wav = speech[1]
        Path(bad_wav).write_bytes(b"this is no longer a WAV file" * 100)
        worker = subprocess.run(
            whisperfarm("worker", "--url", url, "--token", token, "--threads", "2"),
            env=env_for(home, WHISPERFARM_MODEL="tiny.en"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        code = cli.wait()
    finally:
        cli.kill()

    assert worker.returncode == 0, worker.stderr  # a bad chunk doesn't stop the worker
    assert code == 1, cli.stdout + cli.stderr
    errors = [line for line in cli.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert f"chunk {bad_idx}:" in errors[0] and "after 2 attempts" in errors[0]
    assert "whisperfarm retry" in errors[0]
    episode_id, state, reason = rows(home, "SELECT id, state, error FROM episodes")[0]
    assert state == "failed" and f"chunk {bad_idx}" in reason
    chunks = {
        idx: (state, attempt)
        for idx, state, attempt in rows(
            home, "SELECT idx, state, attempt FROM chunks WHERE speech = 1"
        )
    }
    assert chunks.pop(bad_idx) == ("dead", 2)
    assert {state for state, _ in chunks.values()} == {"done"}, "the other chunks finished"
    assert integrity(home) == "ok"

    retry = subprocess.run(
        whisperfarm("retry", episode_id), env=env_for(home), capture_output=True, text=True
    )
    assert retry.returncode == 0, retry.stderr
    assert "re-queued 1 chunk(s)" in retry.stdout
    assert rows(home, "SELECT state, attempt, error FROM chunks WHERE idx = ?", (bad_idx,)) == [
        ("queued", 0, None)
    ]
    assert rows(home, "SELECT state, error FROM episodes") == [("queued", None)]


# Graceful stops -----------------------------------------------------------------------------------


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A served coordinator with three 25-second chunks of the sample, and long leases: a
    chunk back in the queue was handed back, not expired."""
    home = tmp_path / "home"
    ledger = Ledger(home / "ledger.db")
    ledger.create_episode(
        episode_id="ep1",
        name="ep1",
        source=str(SAMPLE),
        content_hash="h",
        model="tiny.en",
        options={"language": "en", "beam_size": 5},
    )
    decoder = Decoder(SAMPLE, block_seconds=25)
    for idx, block in zip(range(3), decoder.blocks(), strict=False):
        wav = home / "episodes" / "ep1" / "chunks" / f"{idx:05d}.wav"
        write_wav(wav, block)
        length = len(block) / SAMPLE_RATE
        ledger.add_chunk(
            "ep1",
            ChunkPlan(idx, idx * 25.0, idx * 25.0 + length, idx * 25.0, idx * 25.0 + length),
            str(wav),
        )
    decoder.kill()
    ledger.finish_chunking("ep1", duration=75.0, chunk_count=3)
    ledger.close()
    token = "graceful-run-token"
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=token,
        scope=lambda: ["ep1"],
        episodes_dir=home / "episodes",
        lease_seconds=600,
    )
    server = BackgroundServer(create_app(config), bind("127.0.0.1", 0))
    server.start()
    yield f"http://127.0.0.1:{server.port}", token, home
    server.stop()
    config.close()


def held_by(home: Path, worker: str) -> tuple[int, float] | None:
    found = rows(
        home,
        "SELECT id, claimed_at FROM chunks WHERE state = 'leased' AND worker_id = ?",
        (worker,),
    )
    return found[0] if found else None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_worker_hands_its_chunk_back_at_once_and_exits_0(
    coordinator: tuple[str, str, Path], tmp_path: Path, signum: int
) -> None:
    url, token, home = coordinator
    worker = Process(
        [sys.executable, "-m", "worker"],
        {
            **os.environ,
            "WHISPERFARM_URL": url,
            "WHISPERFARM_TOKEN": token,
            "WHISPERFARM_MODEL": "tiny.en",
            "WHISPERFARM_THREADS": "1",
            "WHISPERFARM_WORKER_ID": "stopping",
        },
        tmp_path,
        "worker",
    )
    try:
        chunk_id, _ = wait_for(lambda: held_by(home, "stopping"), "the worker to claim", 60)
        time.sleep(0.3)  # transcribing now
        worker.process.send_signal(signum)
        signalled = time.monotonic()
        code = worker.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        worker.kill()
    assert code == 0, worker.stderr
    assert took < 15, took
    assert "handed back" in worker.stderr and "Traceback" not in worker.stderr
    state, attempt, lease = rows(
        home, "SELECT state, attempt, lease_token FROM chunks WHERE id = ?", (chunk_id,)
    )[0]
    assert (state, attempt, lease) == ("queued", 0, None), "released, attempt not spent"
    assert rows(home, "SELECT count(*) FROM chunks WHERE state = 'done'") == [(0,)]


FAKE_TOKEN = "FlyV1 fm2_e2e-faults-fake-token-51f0c3"


def start_fake_fly(tmp: Path, token: str = FAKE_TOKEN, *flags: str) -> FakeFlyProcess:
    """tests/fakefly served in a process that runs a real worker for every started machine."""
    return FakeFlyProcess(tmp, *flags, token=token, app=APP)


def test_stopping_a_fly_machine_hands_its_chunk_back_and_destroys_it(
    coordinator: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, token, home = coordinator
    fake = start_fake_fly(tmp_path)
    try:
        with MachinesClient(APP, FAKE_TOKEN, base_url=fake.url) as client:
            env = {"WHISPERFARM_URL": url, "WHISPERFARM_TOKEN": token, "WHISPERFARM_THREADS": "1"}
            config = build_worker_config(
                image="registry.fly.io/whisperfarm-workers:test",
                size="performance-1x",
                env=env,
                run_id="graceful",
                machine_name="wf-graceful-001",
                model="tiny.en",
            )
            machine = client.create(config, name="wf-graceful-001")
            chunk_id, _ = wait_for(lambda: held_by(home, machine.id), "the machine to claim", 60)
            time.sleep(0.3)
            client.stop(machine.id)  # the fake sends the config's stop signal: SIGTERM
            gone = client.wait(machine.id, "destroyed", timeout=30)
        assert gone.state == "destroyed"
        (seen,) = fake.state()["machines"]
    finally:
        fake.close()
    states = [h["state"] for h in seen["history"]]
    after_start = states[states.index("started") :]
    assert [s for s in after_start if s in ("stopping", "stopped", "destroyed")] == [
        "stopping",
        "stopped",
        "destroyed",
    ], states
    assert seen["exit_code"] == 0
    exits = [e for e in seen["events"] if e["type"] == "exit"]
    assert exits[0]["request"]["exit_event"]["requested_stop"] is True
    state, attempt = rows(home, "SELECT state, attempt FROM chunks WHERE id = ?", (chunk_id,))[0]
    assert (state, attempt) == ("queued", 0), "handed back at once, attempt not spent"
    log = (tmp_path / "machines" / f"{machine.id}.log").read_text()
    assert "handed back" in log


# Fly machines that never start or die, and where the Fly token goes ---------------------------


@pytest.fixture(scope="module")
def fly_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fly-faults")
    fake = start_fake_fly(tmp, FAKE_TOKEN, "--never-start", "1")
    budget = 0.05
    try:
        env = {
            **os.environ,
            "WHISPERFARM_HOME": str(tmp / "home"),
            "WHISPERFARM_FLY_API_URL": fake.url,
            "FLY_API_TOKEN": FAKE_TOKEN,
            "FLY_APP": APP,
            "WHISPERFARM_FLY_POLL_SECONDS": "0.5",
            "WHISPERFARM_FLY_START_LATENCY": "2",
            "WHISPERFARM_FLY_STOP_MARGIN": "2",
            "WHISPERFARM_FLY_WORKER_GIVE_UP_SECONDS": "10",
            "WHISPERFARM_FLY_START_TIMEOUT": "3",
            "WHISPERFARM_LEASE_SECONDS": "3",
        }
        run = Process(
            fly_args(tmp, "--max-machines", "2", "--budget", str(budget)), env, tmp, "cli"
        )
        try:
            # The first machine never starts; one created after it dies 3 s into its work.
            wait_for(lambda: fake.state()["machines"], "a first machine", 60)
            httpx.post(f"{fake.url}/_fake/faults", json={"die": 1, "die_after": 3}, timeout=10)
            code = run.wait()
        finally:
            run.kill()
        result = subprocess.CompletedProcess(run.process.args, code, run.stdout, run.stderr)
        yield {"tmp": tmp, "result": result, "state": fake.state(), "budget": budget}
    finally:
        fake.close()


def test_fly_machines_that_never_start_or_die_still_finish_the_run(
    fly_run: dict[str, Any],
) -> None:
    result, state, tmp = fly_run["result"], fly_run["state"], fly_run["tmp"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert wer(tmp / "out") <= 0.03
    assert_all_destroyed(state)
    assert state["max_concurrent_active"] <= 2
    histories = {m["id"]: [h["state"] for h in m["history"]] for m in state["machines"]}
    never = [m for m, states in histories.items() if "started" not in states]
    assert len(never) == 1, histories
    assert histories[never[0]][-1] == "destroyed"
    # Died on its own: its process exited non-zero and the machine stopped (one destroyed
    # through the API goes straight to destroying).
    died = [
        m["id"]
        for m in state["machines"]
        if m["exit_code"] not in (None, 0) and "stopped" in histories[m["id"]]
    ]
    assert len(died) == 1, histories
    assert "started" in histories[died[0]]
    machines = dict(rows(tmp / "home", "SELECT id, error FROM machines"))
    assert "stuck" in (machines[never[0]] or "")
    price = SIZES["performance-2x"].usd_per_second
    assert billed(state, price) <= fly_run["budget"]
    assert 0 < rows(tmp / "home", "SELECT spent FROM runs")[0][0] <= fly_run["budget"]
    assert rows(tmp / "home", "SELECT DISTINCT state FROM chunks") == [("done",)]


def test_the_fly_token_reaches_no_log_ledger_output_or_error(fly_run: dict[str, Any]) -> None:
    tmp, result = fly_run["tmp"], fly_run["result"]
    assert (tmp / "machines").is_dir() and any((tmp / "machines").iterdir()), "worker logs"
    for secret in (FAKE_TOKEN, FAKE_TOKEN.split()[1]):
        assert files_containing(secret, tmp) == []
        assert secret not in result.stdout + result.stderr


def test_the_run_token_is_only_printed_for_the_user(fly_run: dict[str, Any]) -> None:
    tmp, result = fly_run["tmp"], fly_run["result"]
    token = fly_run["state"]["machines"][0]["config"]["env"]["WHISPERFARM_TOKEN"]
    assert_run_token_only_printed(
        token, result.stdout + result.stderr, tmp / "home", tmp / "out", tmp / "machines"
    )


def test_a_refused_fly_token_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    fake = start_fake_fly(tmp_path)
    wrong = "FlyV1 fm2_wrong-token-9d2a77"
    try:
        result = subprocess.run(
            fly_args(tmp_path),
            env={
                **os.environ,
                "WHISPERFARM_HOME": str(tmp_path / "home"),
                "WHISPERFARM_FLY_API_URL": fake.url,
                "FLY_API_TOKEN": wrong,
                "FLY_APP": APP,
            },
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        fake.close()
    assert result.returncode != 0 and "token" in result.stderr
    assert "fm2_wrong-token" not in result.stdout + result.stderr
    assert files_containing("fm2_wrong-token", tmp_path) == []
