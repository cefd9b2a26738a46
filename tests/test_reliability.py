"""The queue's promises under real concurrency and real crashes, below the CLI.

- Atomic claims across processes: worker processes, each with its own ``Ledger`` on one
  file, and many HTTP clients in several processes against the real coordinator served by
  uvicorn on a loopback port, drain 1,000 chunks; no chunk is ever held by two of them at
  once, and none is handed out (or stored) twice.
- A result acknowledged as "stored" is committed before the answer leaves: seen from a
  fresh connection at the moment the answer starts, and still there after the server
  process is killed with SIGKILL right after answering.
- Losing every local worker ends a run only when no other fleet (Fly) can finish it.

(test_ledger.py covers claims from threads of one process; test_ledger_model.py the
queue's rules one step at a time.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.paths import REPO
from tests.support.results import result_object
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.errors import WorkersLost
from whisperfarm.farm import Fleets
from whisperfarm.ledger import ChunkPlan, LeaseLost, Ledger, WorkerInfo
from whisperfarm.server import BackgroundServer, bind

CHUNKS = 1_000
TOKEN = "reliability-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPAWN = multiprocessing.get_context("spawn")  # no inherited sqlite connections or threads


def queue_episode(path: Path, chunks: int, *, audio: Path | None = None) -> None:
    """One episode of ``chunks`` one-second chunks, queued through the ledger's own API."""
    ledger = Ledger(path)
    ledger.create_episode(
        episode_id="ep1",
        name="ep1",
        source="/audio/ep1.mp3",
        content_hash="hash-ep1",
        model="tiny.en",
        options={"language": "en"},
    )
    for idx in range(chunks):
        plan = ChunkPlan(idx, float(idx), idx + 1.0, float(idx), idx + 1.0)
        ledger.add_chunk("ep1", plan, str(audio or f"/chunks/{idx:05d}.wav"))
    ledger.finish_chunking("ep1", duration=float(chunks), chunk_count=chunks)
    ledger.close()


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# Claims from worker processes, each with its own ledger connection --------------------------


def claim_in_a_process(path: str, n: int, start: Any, out: Any) -> None:
    """A worker process: claim until the queue is done; hand every 7th claim back (it is
    claimed again, by anyone) and complete the rest. Reports every claim and every lease
    it found taken from it (there must be none: leases here never expire)."""
    ledger = Ledger(Path(path))
    worker = WorkerInfo(f"p{n}", kind="local")
    claims: list[tuple[int, int]] = []
    completed: list[int] = []
    stolen: list[int] = []
    start.wait()
    try:
        while True:
            result = ledger.claim(["ep1"], worker, lease_seconds=3600, max_attempts=3)
            if result.status == "done":
                break
            if result.job is None:
                time.sleep(0.001)
                continue
            job = result.job
            claims.append((job.chunk_id, job.attempt))
            try:
                ledger.lease_holder(job.chunk_id, job.lease_token)
                if len(claims) % 7 == 0:
                    ledger.release(job.chunk_id, job.lease_token)
                    continue
                ledger.complete(
                    job.chunk_id, job.lease_token, result=json.dumps(f"/r/p{n}/{job.idx}")
                )
                completed.append(job.chunk_id)
            except LeaseLost:
                stolen.append(job.chunk_id)
    finally:
        ledger.close()
    out.put({"n": n, "claims": claims, "completed": completed, "stolen": stolen})


def test_worker_processes_claim_1000_chunks_each_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    queue_episode(path, CHUNKS)
    processes = 4
    start, out = SPAWN.Barrier(processes), SPAWN.Queue()
    workers = [
        SPAWN.Process(target=claim_in_a_process, args=(str(path), n, start, out))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    assert [r["stolen"] for r in reports] == [[]] * processes, "a lease was held twice"
    completed = [chunk for r in reports for chunk in r["completed"]]
    assert len(completed) == CHUNKS and len(set(completed)) == CHUNKS
    claims = [claim for r in reports for claim in r["claims"]]
    released = len(claims) - CHUNKS
    assert released > 100, "some chunks were handed back and claimed again"
    # A handed-back chunk doesn't spend its attempt: every claim is attempt 1.
    assert {attempt for _, attempt in claims} == {1}
    # Really concurrent: several processes took part (SQLite doesn't queue writers fairly,
    # so how evenly is up to its busy handler).
    assert sum(1 for r in reports if r["completed"]) >= 2

    ledger = Ledger(path)
    assert ledger.progress("ep1").counts == {"done": CHUNKS}
    owners: dict[int, str] = {}
    for chunk_id, written in ledger.results("ep1").items():
        assert isinstance(written, str)  # each client's result is the path it wrote
        owners[chunk_id] = written.split("/")[2]
    by_report = {chunk: f"p{r['n']}" for r in reports for chunk in r["completed"]}
    assert owners == by_report, "each chunk's result is the one its completer stored"
    assert sum(w["chunks_done"] for w in ledger.workers()) == CHUNKS
    ledger.close()
    assert integrity(path) == "ok"


# Claims from many HTTP clients against the served coordinator ---------------------------------


def http_clients_in_a_process(url: str, n: int, threads: int, start: Any, out: Any) -> None:
    """``threads`` concurrent clients, each on its own connection: claim → result until
    the coordinator says done. Reports (chunk id, attempt, answer) per job."""
    done: list[tuple[int, int, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(t: int) -> None:
        worker = {"worker": {"id": f"h{n}-{t}", "kind": "remote"}}
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            while True:
                reply = http.post("/v1/claim", json=worker).json()
                if reply["status"] == "done":
                    return
                if reply["status"] == "wait":
                    time.sleep(0.01)
                    continue
                job = reply["job"]
                body = {
                    "lease_token": job["lease_token"],
                    "result": {
                        "segments": [{"start": 0.0, "end": 1.0, "text": f" h{n}-{t}"}],
                        "model": "tiny.en",
                    },
                }
                answer = http.post(f"/v1/jobs/{job['chunk_id']}/result", json=body)
                with lock:
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text}")
                    else:
                        done.append((job["chunk_id"], job["attempt"], answer.json()["status"]))

    start.wait()
    pool = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put({"done": done, "errors": errors})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, CoordinatorConfig]]:
    """The real coordinator app on uvicorn, on a loopback port, as `transcribe` serves it."""
    home = tmp_path / "home"
    queue_episode(home / "ledger.db", CHUNKS)
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=home / "episodes",
        lease_seconds=600,
    )
    server = BackgroundServer(create_app(config), bind("127.0.0.1", 0))
    server.start()
    yield f"http://127.0.0.1:{server.port}", config
    server.stop()
    config.close()


def test_many_http_clients_claim_1000_chunks_each_once(
    served: tuple[str, CoordinatorConfig],
) -> None:
    url, config = served
    processes, threads = 3, 6
    start, out = SPAWN.Barrier(processes), SPAWN.Queue()
    clients = [
        SPAWN.Process(target=http_clients_in_a_process, args=(url, n, threads, start, out))
        for n in range(processes)
    ]
    for client in clients:
        client.start()
    reports = [out.get(timeout=180) for _ in clients]
    for client in clients:
        client.join(timeout=30)
        assert client.exitcode == 0

    assert [r["errors"] for r in reports] == [[]] * processes
    done = [job for r in reports for job in r["done"]]
    chunk_ids = [chunk for chunk, _, _ in done]
    assert len(chunk_ids) == CHUNKS and len(set(chunk_ids)) == CHUNKS, "a chunk went out twice"
    assert {(attempt, status) for _, attempt, status in done} == {(1, "stored")}
    assert all(r["done"] for r in reports), "every client process got work"

    ledger = Ledger(config.ledger_path)
    chunks = ledger.chunks("ep1")
    assert {c["state"] for c in chunks} == {"done"}
    assert set(ledger.results("ep1")) == {c["id"] for c in chunks}, "one result per chunk"
    assert sum(w["chunks_done"] for w in ledger.workers()) == CHUNKS
    assert len(ledger.workers()) == processes * threads
    ledger.close()
    assert integrity(config.ledger_path) == "ok"


# A result acknowledged is a result committed ------------------------------------------------


class WatchAnswers:
    """ASGI middleware that, the moment a result's answer starts to leave, looks at the
    ledger through a connection of its own."""

    def __init__(self, app: ASGIApp, ledger_path: Path):
        self.app = app
        self.ledger_path = ledger_path
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/result"):
            await self.app(scope, receive, send)
            return
        chunk_id = int(scope["path"].split("/")[3])

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                with sqlite3.connect(self.ledger_path) as fresh:
                    state, text = fresh.execute(
                        "SELECT c.state, r.body FROM chunks c"
                        " LEFT JOIN results r ON r.chunk_id = c.id WHERE c.id = ?",
                        (chunk_id,),
                    ).fetchone()
                self.seen.append({"status": message["status"], "state": state, "result": text})
            await send(message)

        await self.app(scope, receive, watched)


def test_a_stored_answer_leaves_only_after_the_result_is_committed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    queue_episode(home / "ledger.db", 3)
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=home / "episodes",
    )
    watch = WatchAnswers(create_app(config), config.ledger_path)
    with TestClient(watch) as client:
        for n in range(3):
            job = client.post("/v1/claim", json={"worker": {"id": "w"}}, headers=AUTH).json()["job"]
            segments = [{"start": 0.0, "end": 1.0, "text": f" chunk {n}"}]
            body = {
                "lease_token": job["lease_token"],
                "result": {"segments": segments, "model": "tiny.en"},
            }
            answer = client.post(f"/v1/jobs/{job['chunk_id']}/result", json=body, headers=AUTH)
            assert answer.json() == {"status": "stored"}
            seen = watch.seen[-1]
            assert (seen["status"], seen["state"]) == (200, "done")
            assert seen["result"] is not None
            assert json.loads(seen["result"])["segments"] == segments
    config.close()


SERVE_SCRIPT = """
import sys, time
from pathlib import Path
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.errors import WorkersLost
from whisperfarm.farm import Fleets
from whisperfarm.server import BackgroundServer, bind
home, token = Path(sys.argv[1]), sys.argv[2]
config = CoordinatorConfig(
    ledger_path=home / "ledger.db", token=token, scope=lambda: ["ep1"],
    episodes_dir=home / "episodes",
)
server = BackgroundServer(create_app(config), bind("127.0.0.1", 0))
server.start()
print(server.port, flush=True)
time.sleep(600)
"""


def test_a_stored_result_survives_the_server_being_killed_right_after(tmp_path: Path) -> None:
    home = tmp_path / "home"
    queue_episode(home / "ledger.db", 4)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(home), TOKEN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        stored = {}
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
            for n in range(4):
                job = http.post("/v1/claim", json={"worker": {"id": "w"}}).json()["job"]
                segments = [{"start": 0.0, "end": 1.0, "text": f" chunk {n}"}]
                body = {
                    "lease_token": job["lease_token"],
                    "result": {"segments": segments, "model": "tiny.en"},
                }
                answer = http.post(f"/v1/jobs/{job['chunk_id']}/result", json=body)
                assert answer.json() == {"status": "stored"}
                stored[job["chunk_id"]] = segments
                if n == 3:
                    os.kill(server.pid, signal.SIGKILL)  # the instant the last answer is in
    finally:
        server.kill()
        server.wait()
        if server.stdout:
            server.stdout.close()

    assert integrity(home / "ledger.db") == "ok"
    ledger = Ledger(home / "ledger.db")
    chunks = {c["id"]: c for c in ledger.chunks("ep1")}
    results = ledger.results("ep1")
    ledger.close()
    for chunk_id, segments in stored.items():
        assert chunks[chunk_id]["state"] == "done"
        assert result_object(results[chunk_id])["segments"] == segments


# Losing one fleet's workers -----------------------------------------------------------------


class StubFleet:
    def __init__(self, description: str, lost: bool):
        self.description, self.lost = description, lost

    def start(self, url: str, token: str, model: str) -> None:
        pass

    def check(self, ledger: Ledger, work_left: bool) -> None:
        if self.lost:
            raise WorkersLost(f"all {self.description} workers exited with work left")

    def stop(self) -> None:
        pass

    def gone_workers(self) -> list[str]:
        return []

    def stopped(self) -> str:
        return ""


def test_losing_the_local_workers_ends_a_run_only_when_no_other_fleet_is_left(
    tmp_path: Path,
) -> None:
    """A local worker dying in a run with Fly machines on their way (found by
    scripts/chaos) must not end the run: the machines finish the work."""
    ledger = Ledger(tmp_path / "ledger.db")
    local, fly = StubFleet("local", lost=True), StubFleet("fly", lost=False)
    Fleets(local, fly).check(ledger, work_left=True)
    Fleets(fly, local).check(ledger, work_left=True)
    with pytest.raises(WorkersLost, match="local"):
        Fleets(local).check(ledger, work_left=True)
    with pytest.raises(WorkersLost, match="local"):
        Fleets(local, StubFleet("other local", lost=True)).check(ledger, work_left=True)
    ledger.close()
