"""Who may do what with a coordinator, and what secrets a run hands to whom.

- Every route the app serves, documented or not (the API, the status page, FastAPI's own
  /docs and /openapi.json, and paths that don't exist), answers 401 without the run's token,
  whatever the method, and changes nothing.
- A lease token opens its own job only: a worker holding one job can't fetch, heartbeat,
  post, fail or release another with it.
- No file path comes from request data: ids and names shaped like paths reach nothing
  outside the run, and a result lands where the ledger says, whatever the body holds.
- Local workers don't get the Fly API token in their environment (they never need it).

test_coordinator.py covers each job endpoint with a missing or wrong token, superseded
tokens, unknown jobs and jobs outside the run; test_page.py the page's ``?token=``. The
end-to-end checks that no token reaches a log, the ledger or an output are in
test_e2e_faults.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from whisperfarm.chunking import write_wav
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.ledger import ChunkPlan, Ledger
from whisperfarm.local import LocalFleet

TOKEN = "security-run-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Coordinator:
    client: TestClient
    ledger: Ledger
    home: Path
    app: Any

    def job(self, worker: str) -> dict[str, Any]:
        reply = self.client.post("/v1/claim", json={"worker": {"id": worker}}, headers=AUTH)
        assert reply.status_code == 200
        return reply.json()["job"]

    def snapshot(self) -> tuple[Any, ...]:
        files = sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*") if p.is_file())
        files = [f for f in files if not f.startswith("ledger.db")]
        return (self.ledger._rows("SELECT * FROM chunks ORDER BY id"), self.ledger.workers(), files)


def add_episode(ledger: Ledger, home: Path, episode_id: str, chunks: int) -> None:
    ledger.create_episode(
        episode_id=episode_id,
        name=episode_id,
        source=f"/src/{episode_id}.mp3",
        content_hash=f"hash-{episode_id}",
        model="tiny.en",
        options={},
    )
    for idx in range(chunks):
        wav = home / "episodes" / episode_id / "chunks" / f"{idx:05d}.wav"
        write_wav(wav, (np.arange(16_000 * (idx + 1)) % 300).astype(np.int16))
        plan = ChunkPlan(idx, 10.0 * idx, 10.0 * idx + 5, 10.0 * idx, 10.0 * idx + 5)
        ledger.add_chunk(episode_id, plan, str(wav))
    ledger.finish_chunking(episode_id, duration=10.0 * chunks, chunk_count=chunks)


@pytest.fixture
def coordinator(home: Path) -> Iterator[Coordinator]:
    ledger = Ledger(home / "ledger.db")
    add_episode(ledger, home, "ep1", 3)
    add_episode(ledger, home, "other", 1)  # in the ledger, not in this run
    (home / "secret.txt").write_text("not for workers")
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=home / "episodes",
    )
    app = create_app(config)
    with TestClient(app) as client:
        yield Coordinator(client, ledger, home, app)
    config.close()
    ledger.close()


def served_paths(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    """Every path the app routes, including routers it includes."""
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from served_paths(included.routes, prefix + getattr(context, "prefix", ""))


def test_every_route_and_method_needs_the_token_and_changes_nothing(
    coordinator: Coordinator,
) -> None:
    holder = coordinator.job("holder")
    # FastAPI's routes, and the worker API's paths (served ahead of FastAPI, documented in
    # the same schema).
    paths = set(served_paths(coordinator.app.routes)) | set(coordinator.app.openapi()["paths"])
    assert {"/", "/openapi.json", "/docs", "/v1/claim", "/v1/status"} <= paths
    paths.add("/no/such/path")
    before = coordinator.snapshot()
    values = {"{chunk_id}": str(holder["chunk_id"]), "{episode_id}": "ep1"}
    for template in sorted(paths):
        path = template
        for name, value in values.items():
            path = path.replace(name, value)
        for method in METHODS:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = coordinator.client.request(
                    method,
                    path,
                    headers=headers | {"X-Lease-Token": holder["lease_token"]},
                    json={"lease_token": holder["lease_token"], "worker": {"id": "x"}},
                )
                assert response.status_code == 401, (method, path, headers)
                assert b"openapi" not in response.content
    assert coordinator.snapshot() == before


def job_calls(chunk_id: int, token: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    result = {"segments": [{"start": 0.0, "end": 1.0, "text": " not mine"}], "model": "tiny.en"}
    return [
        ("GET", f"/v1/jobs/{chunk_id}/audio", None),
        ("POST", f"/v1/jobs/{chunk_id}/heartbeat", {"lease_token": token}),
        ("POST", f"/v1/jobs/{chunk_id}/result", {"lease_token": token, "result": result}),
        ("POST", f"/v1/jobs/{chunk_id}/failure", {"lease_token": token, "error": "x"}),
        ("POST", f"/v1/jobs/{chunk_id}/release", {"lease_token": token}),
    ]


def test_a_lease_token_opens_only_its_own_job(coordinator: Coordinator) -> None:
    mine, theirs = coordinator.job("mallory"), coordinator.job("alice")
    done = coordinator.job("bob")
    result = {"segments": [{"start": 0.0, "end": 1.0, "text": " bob's"}], "model": "tiny.en"}
    answer = coordinator.client.post(
        f"/v1/jobs/{done['chunk_id']}/result",
        json={"lease_token": done["lease_token"], "result": result},
        headers=AUTH,
    )
    assert answer.json() == {"status": "stored"}
    before = coordinator.snapshot()
    for target in (theirs, done):  # a job someone else holds, and one already finished
        for method, path, body in job_calls(target["chunk_id"], mine["lease_token"]):
            response = coordinator.client.request(
                method,
                path,
                json=body,
                headers=AUTH | {"X-Lease-Token": mine["lease_token"]},
            )
            assert response.status_code == 409, (path, response.text)
            assert response.headers["content-type"] == "application/json"
    assert coordinator.snapshot() == before
    # ... while the same token still works for its own job.
    audio = coordinator.client.get(
        f"/v1/jobs/{mine['chunk_id']}/audio",
        headers=AUTH | {"X-Lease-Token": mine["lease_token"]},
    )
    assert audio.status_code == 200 and audio.content.startswith(b"RIFF")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/..%2F..%2Fsecret.txt/audio",
        "/v1/jobs/1%2F..%2F..%2Fsecret.txt/audio",
        "/v1/jobs/1/../../secret.txt",
        "/v1/jobs/-1/audio",
        "/v1/jobs/0x1/audio",
        "/v1/episodes/..%2F..%2Fsecret.txt/text",
        "/v1/episodes/ep1%2F..%2Fother/text",
        "/v1/episodes/other/text",
        "/v1/status?episode=../other",
        "/v1/status?episode=other",
        "/secret.txt",
        "/episodes/ep1/chunks/00000.wav",
    ],
)
def test_path_shaped_ids_reach_nothing_outside_the_run(coordinator: Coordinator, path: str) -> None:
    held = coordinator.job("w")
    response = coordinator.client.get(path, headers=AUTH | {"X-Lease-Token": held["lease_token"]})
    assert response.status_code in (404, 409, 422), response.status_code
    assert b"not for workers" not in response.content
    assert b"RIFF" not in response.content


def test_a_result_creates_no_file_whatever_the_body_holds(coordinator: Coordinator) -> None:
    job = coordinator.job("w")
    before = set(coordinator.home.rglob("*"))
    body = {
        "lease_token": job["lease_token"],
        "result": {
            "segments": [{"start": 0.0, "end": 1.0, "text": "../../secret.txt"}],
            "language": "../..",
            "model": "tiny.en",
        },
        "busy_seconds": 1.0,
    }
    answer = coordinator.client.post(f"/v1/jobs/{job['chunk_id']}/result", json=body, headers=AUTH)
    assert answer.json() == {"status": "stored"}
    created = {p for p in set(coordinator.home.rglob("*")) - before if p.is_file()}
    assert {p for p in created if not p.name.startswith("ledger.db")} == set()
    assert coordinator.ledger.result(job["chunk_id"]) == body["result"]
    assert (coordinator.home / "secret.txt").read_text() == "not for workers"


def test_local_workers_do_not_get_the_fly_api_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "FLY_API_TOKEN": "FlyV1 fm2_local-leak-check",
        "FLY_ACCESS_TOKEN": "fm2_access-leak-check",
        "WHISPERFARM_FLY_API_TOKEN": "fm2_wf-leak-check",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    started: list[dict[str, str]] = []

    class Recorded:
        def __init__(self, args: list[str], *, env: dict[str, str], **_: Any):
            started.append(env)

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    fleet = LocalFleet(2, 1, logs_dir=tmp_path / "logs", run_id="r1")
    fleet.start("http://127.0.0.1:1", "run-token", "tiny.en")
    fleet.stop()

    assert len(started) == 2
    for env in started:
        assert env["WHISPERFARM_TOKEN"] == "run-token"
        assert env["PATH"] == os.environ["PATH"], "the rest of the environment is passed on"
        leaked = [name for name in secrets if name in env]
        assert not leaked, f"local worker got {leaked}"
        assert not any(value in " ".join(env.values()) for value in secrets.values())
