"""The coordinator API, in-process (TestClient) over a real ledger file and a FakeClock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.clock import FakeClock
from tests.support.results import result_object
from whisperfarm.chunk_audio import chunk_path, write_chunk
from whisperfarm.coordinator import MAX_BODY_BYTES, create_app
from whisperfarm.coordinator_config import LOCAL_WAIT_SECONDS, CoordinatorConfig
from whisperfarm.decoding import SENT_WHEN_SET, WIRE_OPTIONS, Decoding
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from worker.audio import ChunkFormat
from worker.wire import WAIT_SECONDS

TOKEN = "run-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE = 60.0
MAX_ATTEMPTS = 3


@dataclass
class Farm:
    client: TestClient
    ledger: Ledger  # the test's own connection, for looking and arranging
    config: CoordinatorConfig
    episodes_dir: Path
    audio: dict[int, bytes]  # chunk id -> WAV bytes
    outside_chunk: int  # a chunk of an episode the coordinator doesn't serve

    def claim(self, worker: str = "w1") -> dict:
        response = self.client.post("/v1/claim", json={"worker": {"id": worker}}, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    def job(self, worker: str = "w1") -> dict:
        reply = self.claim(worker)
        assert reply["status"] == "job", reply
        return reply["job"]

    def post(self, path: str, body: dict, headers: dict | None = None):
        return self.client.post(path, json=body, headers=AUTH if headers is None else headers)

    def result(self, job: dict, text: str = " hello", **extra):
        body = {
            "lease_token": job["lease_token"],
            "result": {
                "segments": [{"start": 0.0, "end": 1.5, "text": text}],
                "language": "en",
                "model": "tiny.en",
            },
            **extra,
        }
        return self.post(f"/v1/jobs/{job['chunk_id']}/result", body)

    def snapshot(self) -> tuple:
        return (
            self.ledger._rows("SELECT * FROM chunks ORDER BY id"),
            self.ledger._rows("SELECT * FROM results ORDER BY chunk_id"),
            self.ledger.workers(),
        )


def add_episode(
    ledger: Ledger,
    chunks_dir: Path,
    episode_id: str,
    lengths: list[float],
    chunk_format: ChunkFormat = ChunkFormat.WAV,
) -> dict:
    ledger.create_episode(
        episode_id=episode_id,
        name=episode_id,
        source=f"/src/{episode_id}.mp3",
        content_hash=f"hash-{episode_id}",
        model="tiny.en",
        options={"language": "en", "beam_size": 3},
    )
    audio = {}
    t = 0.0
    for idx, length in enumerate(lengths):
        samples = (np.arange(int(length * 16_000)) % 200 - 100 + idx).astype(np.int16)
        path = chunk_path(chunks_dir / episode_id, idx, chunk_format)
        write_chunk(path, samples, chunk_format)
        ledger.add_chunk(episode_id, ChunkPlan(idx, t, t + length, t, t + length), str(path))
        audio[idx] = path.read_bytes()
        t += length
    ledger.finish_chunking(episode_id, duration=t, chunk_count=len(lengths))
    return {c["id"]: audio[c["idx"]] for c in ledger.chunks(episode_id)}


@pytest.fixture
def farm(
    tmp_path: Path, home: Path, ledger: Ledger, clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[Farm]:
    """Episode ep1's chunks are WAV unless the test names another format (indirect)."""
    chunk_format = getattr(request, "param", ChunkFormat.WAV)
    audio = add_episode(ledger, tmp_path / "chunks", "ep1", [2.0, 1.0], chunk_format)
    add_episode(ledger, tmp_path / "chunks", "ep2", [1.0])
    outside = ledger.chunks("ep2")[0]["id"]
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=tmp_path / "home" / "episodes",
        lease_seconds=LEASE,
        max_attempts=MAX_ATTEMPTS,
        clock=clock,
    )
    client = TestClient(create_app(config))
    yield Farm(client, ledger, config, config.episodes_dir, audio, outside)
    client.close()
    config.close()


# Authorization ------------------------------------------------------------------------------

BAD_AUTH = {
    "missing": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "no scheme": {"Authorization": TOKEN},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
}


def job_requests(job: dict) -> list[tuple[str, str, dict | None, dict]]:
    """(method, path, json body, extra headers) for every endpoint, with valid bodies."""
    chunk, token = job["chunk_id"], job["lease_token"]
    result = {"segments": [{"start": 0.0, "end": 1.0, "text": "x"}], "model": "tiny.en"}
    return [
        ("GET", "/v1/health", None, {}),
        ("POST", "/v1/claim", {"worker": {"id": "intruder"}}, {}),
        ("GET", f"/v1/jobs/{chunk}/audio", None, {"X-Lease-Token": token}),
        ("POST", f"/v1/jobs/{chunk}/heartbeat", {"lease_token": token}, {}),
        ("POST", f"/v1/jobs/{chunk}/result", {"lease_token": token, "result": result}, {}),
        ("POST", f"/v1/jobs/{chunk}/failure", {"lease_token": token, "error": "x"}, {}),
        ("POST", f"/v1/jobs/{chunk}/release", {"lease_token": token}, {}),
    ]


@pytest.mark.parametrize("auth", list(BAD_AUTH), ids=list(BAD_AUTH))
def test_every_endpoint_refuses_a_missing_or_wrong_token_and_changes_nothing(
    farm: Farm, clock, auth: str
) -> None:
    job = farm.job()
    clock.advance(10)
    before = farm.snapshot()
    for method, path, body, headers in job_requests(job):
        response = farm.client.request(method, path, json=body, headers=BAD_AUTH[auth] | headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "audio/wav" not in response.headers.get("content-type", "")
    assert farm.snapshot() == before
    assert farm.ledger.results("ep1") == {}


def test_the_right_token_is_accepted(farm: Farm) -> None:
    response = farm.client.get("/v1/health", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unauthenticated_request_is_refused_before_its_body_is_parsed(farm: Farm) -> None:
    """Without a token the answer is 401 whatever the body: the server must not parse
    (or validate and echo back) what an unauthenticated client sends."""
    response = farm.client.post(
        "/v1/claim", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401, response.text


# Claim ------------------------------------------------------------------------------------


def test_claim_returns_the_job(farm: Farm, clock) -> None:
    job = farm.job()
    assert set(job) == {
        "chunk_id",
        "episode_id",
        "idx",
        "start",
        "end",
        "attempt",
        "lease_token",
        "lease_expires_at",
        "model",
        "word_timestamps",
        "language",
        "beam_size",
        "lease_seconds",
        "audio_url",
    }
    # the longest chunk first
    assert (job["episode_id"], job["idx"], job["start"], job["end"]) == ("ep1", 0, 0.0, 2.0)
    assert job["attempt"] == 1
    assert job["model"] == "tiny.en"
    assert (job["language"], job["beam_size"]) == ("en", 3)
    assert job["word_timestamps"] is False
    assert job["lease_seconds"] == LEASE
    assert job["lease_expires_at"] == clock() + LEASE
    assert job["audio_url"] == f"/v1/jobs/{job['chunk_id']}/audio"
    chunk = farm.ledger.chunk(job["chunk_id"])
    assert (chunk["state"], chunk["lease_token"], chunk["worker_id"]) == (
        "leased",
        job["lease_token"],
        "w1",
    )


def test_a_job_carries_the_episodes_decoding_options(farm: Farm) -> None:
    """--task, --initial-prompt, --hotwords, --temperature and --vad-filter reach the
    worker through the job; at their defaults they are left out, as before they existed."""
    options = Decoding(
        language="de",
        beam_size=2,
        task="translate",
        initial_prompt="Names: Ada.",
        hotwords="Lovelace",
        temperature=0.4,
        vad_filter=True,
    ).options()
    farm.ledger.switch_options("ep1", options)
    job = farm.job()
    assert {name: job[name] for name in WIRE_OPTIONS} == {
        "language": "de",
        "beam_size": 2,
        "task": "translate",
        "initial_prompt": "Names: Ada.",
        "hotwords": "Lovelace",
        "temperature": 0.4,
        "vad_filter": True,
        "compute_type": "int8",
    }
    farm.ledger.switch_options("ep1", {"language": "en", "beam_size": 5})  # an old episode's
    assert not set(SENT_WHEN_SET) & set(farm.job())


def test_claim_records_the_worker(farm: Farm) -> None:
    body = {"worker": {"id": "m1", "kind": "fly", "host": "h", "region": "ord", "threads": 8}}
    assert farm.post("/v1/claim", body).json()["status"] == "job"
    (worker,) = farm.ledger.workers()
    assert (worker["id"], worker["kind"], worker["host"], worker["region"], worker["threads"]) == (
        "m1",
        "fly",
        "h",
        "ord",
        8,
    )


def test_claim_waits_then_is_done(farm: Farm) -> None:
    first, second = farm.job(), farm.job()
    assert {first["idx"], second["idx"]} == {0, 1}
    reply = farm.claim()
    assert reply == {"status": "wait", "retry_after": 1.0}
    for job in (first, second):
        assert farm.result(job).json() == {"status": "stored"}
    assert farm.claim()["status"] == "done"
    # the episode outside the scope was never served
    assert farm.ledger.chunk(farm.outside_chunk)["state"] == "queued"


def test_the_coordinator_knows_which_attached_workers_have_not_heard_done(farm: Farm) -> None:
    """A finished run keeps serving until every worker still attached has been told "done"
    (farm.py): the coordinator must know who was told to wait, and who heard done."""
    first, second = farm.job("w1"), farm.job("w2")
    assert farm.claim("w3")["status"] == "wait"
    assert farm.config.attached.not_told_done(within=60) == ["w1", "w2", "w3"]
    for job in (first, second):
        assert farm.result(job).json() == {"status": "stored"}
    assert farm.claim("w1")["status"] == "done"
    assert farm.config.attached.not_told_done(within=60) == ["w2", "w3"]
    farm.claim("w2"), farm.claim("w3")
    assert farm.config.attached.not_told_done(within=60) == []


def test_the_runs_own_local_workers_are_not_waited_for(farm: Farm) -> None:
    """The farm stops its local workers itself: waiting until they heard "done" cost
    every local run half a second at its end."""
    body = {"worker": {"id": "local-1", "kind": "local"}}
    assert farm.post("/v1/claim", body).json()["status"] == "job"
    assert farm.claim("w9")["status"] == "job"
    assert farm.config.attached.not_told_done(within=60) == ["w9"]


def test_the_runs_local_workers_are_told_to_ask_again_sooner(farm: Farm) -> None:
    """A local worker asking a second late idles one of this machine's few cores."""
    farm.job(), farm.job()
    local = farm.post("/v1/claim", {"worker": {"id": "local-1", "kind": "local"}}).json()
    assert local == {"status": "wait", "retry_after": LOCAL_WAIT_SECONDS}
    assert farm.claim("w2") == {"status": "wait", "retry_after": WAIT_SECONDS}
    assert LOCAL_WAIT_SECONDS < WAIT_SECONDS


def test_a_batched_claim_is_shared_among_the_runs_planned_fleet(farm: Farm) -> None:
    """The fleet size the run plans reaches the ledger's claim: with a fleet of 2 and 2
    chunks, a claim of 5 gets 1."""
    farm.config.fleet_size = 2
    reply = farm.post("/v1/claim", {"worker": {"id": "w1"}, "max_jobs": 5}).json()
    assert reply["status"] == "job" and "more_jobs" not in reply


def test_a_claim_of_several_leases_each_job_on_its_own(farm: Farm) -> None:
    """A batched claim hands out every job it can (longest first, no more than asked),
    each with its own attempt and token: a result under one lease is refused for another."""
    reply = farm.post("/v1/claim", {"worker": {"id": "w1"}, "max_jobs": 5}).json()
    assert reply["status"] == "job"
    jobs = [reply["job"], *reply["more_jobs"]]
    assert [(job["idx"], job["end"] - job["start"]) for job in jobs] == [(0, 2.0), (1, 1.0)]
    assert len({job["lease_token"] for job in jobs}) == 2
    first, second = jobs
    swapped = {**first, "lease_token": second["lease_token"]}
    assert farm.result(swapped).status_code == 409
    for job in jobs:
        assert farm.ledger.chunk(job["chunk_id"])["lease_token"] == job["lease_token"]
        assert farm.result(job).json() == {"status": "stored"}
    assert farm.claim()["status"] == "done"


def test_a_claim_of_one_answers_as_before_batched_claims(farm: Farm) -> None:
    reply = farm.post("/v1/claim", {"worker": {"id": "w1"}, "max_jobs": 1}).json()
    assert set(reply) == {"status", "job"}


@pytest.mark.parametrize("max_jobs", [0, 65, "many"])
def test_a_claim_for_too_many_or_too_few_jobs_is_422(farm: Farm, max_jobs: object) -> None:
    response = farm.post("/v1/claim", {"worker": {"id": "w1"}, "max_jobs": max_jobs})
    assert response.status_code == 422
    assert farm.ledger.workers() == []


# Audio ------------------------------------------------------------------------------------


def test_audio_with_the_lease_token_returns_the_wav(farm: Farm) -> None:
    job = farm.job()
    response = farm.client.get(
        job["audio_url"], headers=AUTH | {"X-Lease-Token": job["lease_token"]}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.content == farm.audio[job["chunk_id"]]


@pytest.mark.parametrize(
    ("farm", "content_type", "magic"),
    [(ChunkFormat.OPUS, "audio/ogg", b"OggS"), (ChunkFormat.FLAC, "audio/flac", b"fLaC")],
    indirect=["farm"],
)
def test_audio_comes_with_its_formats_content_type(
    farm: Farm, content_type: str, magic: bytes
) -> None:
    for _ in range(2):
        job = farm.job()
        response = farm.client.get(
            job["audio_url"], headers=AUTH | {"X-Lease-Token": job["lease_token"]}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == content_type
        assert response.content == farm.audio[job["chunk_id"]]
        assert response.content[:4] == magic


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_audio_without_the_lease_token_is_409(farm: Farm, token: str | None) -> None:
    job = farm.job()
    headers = AUTH if token is None else AUTH | {"X-Lease-Token": token}
    response = farm.client.get(job["audio_url"], headers=headers)
    assert response.status_code == 409
    assert "lease lost" in response.json()["detail"]


def test_audio_for_a_queued_chunk_is_409(farm: Farm) -> None:
    queued = next(c for c in farm.ledger.chunks("ep1") if c["state"] == "queued")
    response = farm.client.get(
        f"/v1/jobs/{queued['id']}/audio", headers=AUTH | {"X-Lease-Token": ""}
    )
    assert response.status_code == 409


def keep_alive(farm: Farm, job: dict) -> None:
    response = farm.post(
        f"/v1/jobs/{job['chunk_id']}/heartbeat", {"lease_token": job["lease_token"]}
    )
    assert response.status_code == 200


def expire_and_reclaim(farm: Farm, clock) -> tuple[dict, dict]:
    """The shorter chunk's first attempt loses its lease to a second attempt (the longer
    chunk stays leased to a live worker, so the second claim can only take this one)."""
    other = farm.job("other")
    old = farm.job("w1")
    clock.advance(LEASE + 1)
    keep_alive(farm, other)
    new = farm.job("w2")
    assert new["chunk_id"] == old["chunk_id"]
    assert (old["attempt"], new["attempt"]) == (1, 2)
    return old, new


def test_audio_with_a_superseded_token_is_409(farm: Farm, clock) -> None:
    old, new = expire_and_reclaim(farm, clock)
    response = farm.client.get(
        old["audio_url"], headers=AUTH | {"X-Lease-Token": old["lease_token"]}
    )
    assert response.status_code == 409
    response = farm.client.get(
        new["audio_url"], headers=AUTH | {"X-Lease-Token": new["lease_token"]}
    )
    assert response.status_code == 200


# Heartbeat ----------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(farm: Farm, clock) -> None:
    job = farm.job()
    clock.advance(45)
    response = farm.post(
        f"/v1/jobs/{job['chunk_id']}/heartbeat", {"lease_token": job["lease_token"]}
    )
    assert response.status_code == 200
    assert response.json() == {"lease_expires_in": LEASE}
    assert farm.ledger.chunk(job["chunk_id"])["lease_expires_at"] == clock() + LEASE


def test_heartbeat_with_a_wrong_token_is_409_and_changes_nothing(farm: Farm, clock) -> None:
    job = farm.job()
    clock.advance(45)
    response = farm.post(f"/v1/jobs/{job['chunk_id']}/heartbeat", {"lease_token": "nope"})
    assert response.status_code == 409
    assert farm.ledger.chunk(job["chunk_id"])["lease_expires_at"] == job["lease_expires_at"]


# Results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["small.en", "/models/tiny.en", "tiny"])
def test_a_result_made_with_another_model_is_refused_and_changes_nothing(
    farm: Farm, model: str
) -> None:
    """A worker that ran another model than the episode's (an old image's baked-in
    WHISPERFARM_MODEL overrode the job's) must not have its result stored as if right."""
    job = farm.job()
    before = farm.snapshot()
    body = {
        "lease_token": job["lease_token"],
        "result": {"segments": [{"start": 0.0, "end": 1.0, "text": " x"}], "model": model},
    }
    response = farm.post(f"/v1/jobs/{job['chunk_id']}/result", body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"made with model {model!r}" in detail and "with 'tiny.en'" in detail
    assert farm.snapshot() == before
    assert farm.ledger.results("ep1") == {}


def test_result_is_stored_in_the_ledger_with_the_chunk_done(farm: Farm, clock) -> None:
    job = farm.job()
    clock.advance(5)
    segments = [
        {
            "start": 0.0,
            "end": 1.5,
            "text": " hello",
            "avg_logprob": -0.2,
            "words": [{"start": 0.0, "end": 0.5, "word": " hello", "probability": 0.9}],
        }
    ]
    body = {
        "lease_token": job["lease_token"],
        "result": {"segments": segments, "language": "en", "model": "tiny.en", "elapsed": 1.0},
        "busy_seconds": 4.5,
    }
    response = farm.post(f"/v1/jobs/{job['chunk_id']}/result", body)

    assert response.status_code == 200
    assert response.json() == {"status": "stored"}
    chunk = farm.ledger.chunk(job["chunk_id"])
    assert chunk["state"] == "done"
    assert farm.ledger.results("ep1") == {
        job["chunk_id"]: {
            "segments": segments,
            "language": "en",
            "model": "tiny.en",
            "elapsed": 1.0,
        }
    }
    (worker,) = farm.ledger.workers()
    assert (worker["chunks_done"], worker["busy_seconds"]) == (1, 4.5)


def test_a_duplicate_result_is_200_duplicate_and_keeps_the_first(farm: Farm) -> None:
    job = farm.job()
    assert farm.result(job, " first").json() == {"status": "stored"}
    again = farm.result(job, " second")

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    (stored,) = farm.ledger.results("ep1").values()
    assert result_object(stored)["segments"][0]["text"] == " first"
    assert farm.ledger.workers()[0]["chunks_done"] == 1


def test_a_late_result_from_an_expired_and_reclaimed_attempt_is_409(farm: Farm, clock) -> None:
    old, new = expire_and_reclaim(farm, clock)

    # the old attempt posts while the new one still works ...
    early = farm.result(old, " stale")
    assert early.status_code == 409
    assert farm.ledger.results("ep1") == {}
    assert farm.ledger.chunk(old["chunk_id"])["state"] == "leased"

    # ... the new one finishes, and the old one posts again
    assert farm.result(new, " fresh").json() == {"status": "stored"}
    late = farm.result(old, " stale")
    assert late.status_code == 409

    assert farm.ledger.chunk(old["chunk_id"])["attempt"] == 2
    (stored,) = farm.ledger.results("ep1").values()
    assert result_object(stored)["segments"][0]["text"] == " fresh"


def test_a_late_result_for_an_expired_lease_nobody_took_is_still_stored(farm: Farm, clock) -> None:
    job = farm.job()
    clock.advance(LEASE * 2)
    assert farm.result(job).json() == {"status": "stored"}
    assert farm.ledger.chunk(job["chunk_id"])["state"] == "done"


# Failure and release ----------------------------------------------------------------------------


def test_failure_requeues_then_goes_dead_at_max_attempts(farm: Farm) -> None:
    farm.job("other")  # the longer chunk, held
    states = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = farm.job()
        assert job["attempt"] == attempt
        response = farm.post(
            f"/v1/jobs/{job['chunk_id']}/failure",
            {"lease_token": job["lease_token"], "error": f"boom {attempt}"},
        )
        assert response.status_code == 200
        states.append(response.json()["state"])
    assert states == ["queued", "queued", "dead"]
    chunk = farm.ledger.chunk(job["chunk_id"])
    assert (chunk["state"], chunk["error"], chunk["attempt"]) == ("dead", "boom 3", 3)
    assert farm.claim()["status"] == "wait"  # only "other"'s chunk left


def test_failure_with_a_wrong_token_is_409(farm: Farm) -> None:
    job = farm.job()
    response = farm.post(
        f"/v1/jobs/{job['chunk_id']}/failure", {"lease_token": "nope", "error": "boom"}
    )
    assert response.status_code == 409
    assert farm.ledger.chunk(job["chunk_id"])["state"] == "leased"


def test_release_hands_the_chunk_back_unharmed(farm: Farm) -> None:
    job = farm.job()
    response = farm.post(f"/v1/jobs/{job['chunk_id']}/release", {"lease_token": job["lease_token"]})
    assert response.status_code == 200
    assert response.json() == {"state": "queued"}
    chunk = farm.ledger.chunk(job["chunk_id"])
    assert (chunk["state"], chunk["attempt"], chunk["lease_token"]) == ("queued", 0, None)
    again = farm.post(f"/v1/jobs/{job['chunk_id']}/release", {"lease_token": job["lease_token"]})
    assert again.status_code == 409


# Unknown and out-of-scope jobs ----------------------------------------------------------------


def test_unknown_job_is_404_everywhere(farm: Farm) -> None:
    fake = {"chunk_id": 987654, "lease_token": "tok"}
    before = farm.snapshot()
    for method, path, body, headers in job_requests(fake)[2:]:
        response = farm.client.request(method, path, json=body, headers=AUTH | headers)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "no job 987654"}
    assert farm.snapshot() == before


def test_a_job_of_an_episode_outside_the_scope_is_404_even_with_its_token(farm: Farm) -> None:
    job = farm.ledger.claim(
        ["ep2"], WorkerInfo("elsewhere"), lease_seconds=LEASE, max_attempts=3
    ).job
    assert job is not None
    outside = {"chunk_id": job.chunk_id, "lease_token": job.lease_token}
    assert outside["chunk_id"] == farm.outside_chunk
    before = farm.snapshot()
    for method, path, body, headers in job_requests(outside)[2:]:
        response = farm.client.request(method, path, json=body, headers=AUTH | headers)
        assert response.status_code == 404, path
    assert farm.snapshot() == before
    assert not (farm.episodes_dir / "ep2").exists()


# Validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"worker": {}}',
        b'{"worker": {"id": ""}}',
        b'{"worker": {"id": 42}}',
        b'{"worker": {"id": "w", "threads": "lots"}}',
        b'{"worker": {"id": "w", "threads": 0}}',
        b'{"worker": {"id": "' + b"x" * 201 + b'"}}',
    ],
)
def test_a_malformed_claim_is_422_and_changes_nothing(farm: Farm, body: bytes) -> None:
    before = farm.snapshot()
    response = farm.client.post(
        "/v1/claim", content=body, headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert farm.snapshot() == before


@pytest.mark.parametrize(
    "result",
    [
        {"model": "tiny.en"},
        {"segments": "nope", "model": "tiny.en"},
        {"segments": [{"start": "soon", "end": 1.0, "text": "x"}], "model": "tiny.en"},
        {"segments": [{"start": 0.0, "end": 1.0}], "model": "tiny.en"},
        {"segments": [{"start": -0.5, "end": 1.0, "text": "x"}], "model": "tiny.en"},
        {"segments": [{"start": 0.0, "end": -1.0, "text": "x"}], "model": "tiny.en"},
        {
            "segments": [{"start": 0.0, "end": 1.0, "text": "x", "words": [{"start": 0}]}],
            "model": "tiny.en",
        },
        {"segments": [{"start": 0.0, "end": 1.0, "text": "x"}]},  # which model made it?
        {"segments": [{"start": 0.0, "end": 1.0, "text": "x"}], "model": ""},
    ],
)
def test_a_malformed_result_is_422_and_changes_nothing(farm: Farm, result: dict) -> None:
    job = farm.job()
    before = farm.snapshot()
    response = farm.post(
        f"/v1/jobs/{job['chunk_id']}/result", {"lease_token": job["lease_token"], "result": result}
    )
    assert response.status_code == 422
    assert farm.snapshot() == before
    assert farm.ledger.results("ep1") == {}


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "-1e-9"])
@pytest.mark.parametrize("field", ["start", "end"])
def test_non_finite_or_negative_segment_times_are_422(farm: Farm, field: str, value: str) -> None:
    """NaN and Infinity are JSON tokens Python's json accepts: they must be refused with a
    422, not break the error response (a 500 is retried by the worker as an outage)."""
    job = farm.job()
    segment = {"start": "0.0", "end": "1.0", "text": '"x"'} | {field: value}
    raw = (
        f'{{"lease_token": "{job["lease_token"]}", "result": {{"segments": [{{"start": '
        f'{segment["start"]}, "end": {segment["end"]}, "text": {segment["text"]}}}], '
        '"model": "tiny.en"}}'
    )
    response = farm.client.post(
        f"/v1/jobs/{job['chunk_id']}/result",
        content=raw.encode(),
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert farm.ledger.chunk(job["chunk_id"])["state"] == "leased"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-3.0"])
def test_non_finite_or_negative_word_times_are_422(farm: Farm, value: str) -> None:
    """Word times are what a seam is stitched by and become segment times when a segment
    is rebuilt, so they need the same check as segment times (a NaN later breaks the
    srt/vtt writers)."""
    job = farm.job()
    raw = (
        f'{{"lease_token": "{job["lease_token"]}", "result": {{"segments": [{{"start": 0.0,'
        f' "end": 1.0, "text": "x", "words": [{{"start": {value}, "end": 0.5, "word": "x"}}]}}], '
        '"model": "tiny.en"}}'
    )
    response = farm.client.post(
        f"/v1/jobs/{job['chunk_id']}/result",
        content=raw.encode(),
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert farm.ledger.chunk(job["chunk_id"])["state"] == "leased"


def test_negative_busy_seconds_is_422(farm: Farm) -> None:
    job = farm.job()
    assert farm.result(job, busy_seconds=-1).status_code == 422


def test_a_nan_where_a_string_belongs_is_422_not_a_server_error(farm: Farm) -> None:
    """Python's json accepts the NaN token; the 422 that reports it must still be
    renderable (a 500 here is retried by workers as if the coordinator were down)."""
    job = farm.job()
    response = farm.client.post(
        f"/v1/jobs/{job['chunk_id']}/heartbeat",
        content=b'{"lease_token": NaN}',
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422


# Body size -------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_changes_nothing(farm: Farm) -> None:
    job = farm.job()
    before = farm.snapshot()
    response = farm.client.post(
        f"/v1/jobs/{job['chunk_id']}/result",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert farm.snapshot() == before


def test_a_bad_content_length_is_413(farm: Farm) -> None:
    response = farm.client.post("/v1/claim", content=b"{}", headers=AUTH | {"Content-Length": "-5"})
    assert response.status_code == 413


def test_a_chunked_body_over_the_limit_is_413(farm: Farm) -> None:
    """A body sent without Content-Length (chunked transfer encoding) must be held to the
    same limit, or any client can make the coordinator buffer as much as it likes."""

    def body():
        for _ in range(MAX_BODY_BYTES // (1024 * 1024) + 1):
            yield b" " * (1024 * 1024)

    response = farm.client.post(
        "/v1/claim", content=body(), headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text[:200]


def test_a_result_or_a_failure_tells_the_farm_a_chunk_settled(farm: Farm) -> None:
    """The farm's watch loop wakes on it rather than sleeping out its tick."""
    settled = farm.config.settled
    job = farm.job()
    assert not settled.is_set()
    farm.post(f"/v1/jobs/{job['chunk_id']}/heartbeat", {"lease_token": job["lease_token"]})
    assert not settled.is_set()
    body = {
        "lease_token": job["lease_token"],
        "result": {"segments": [], "model": "tiny.en"},
    }
    assert farm.post(f"/v1/jobs/{job['chunk_id']}/result", body).status_code == 200
    assert settled.is_set()

    settled.clear()
    other = farm.job()
    failed = farm.post(
        f"/v1/jobs/{other['chunk_id']}/failure",
        {"lease_token": other["lease_token"], "error": "bad audio"},
    )
    assert failed.status_code == 200
    assert settled.is_set()
