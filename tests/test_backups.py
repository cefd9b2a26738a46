"""Backup attempts of stragglers: when the queue is empty, an idle worker gets a backup lease
on the chunk that has run longest past what done chunks took; the first result wins and the
other attempt is fenced off (ledger.queue), in the ledger and through the worker API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.clock import FakeClock
from tests.support.episodes import make_episode
from tests.support.results import result_object
from whisperfarm.chunking import write_wav
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.ledger import Job, LeaseLost, Ledger, WorkerInfo
from worker.wire import WorkerKind

LEASE = 60.0


def claim(
    ledger: Ledger, worker: str, *, backups: bool = True, kind: str = WorkerKind.REMOTE
) -> Job | None:
    return ledger.claim(
        ["ep1"],
        WorkerInfo(worker, kind=kind),
        lease_seconds=LEASE,
        max_attempts=3,
        backups=backups,
    ).job


def result(text: str) -> str:
    return json.dumps({"segments": [{"start": 0.0, "end": 1.0, "text": text}], "model": "t"})


def stored_text(ledger: Ledger, chunk_id: int) -> str:
    return str(result_object(ledger.result(chunk_id))["segments"][0]["text"])


@pytest.fixture
def straggler(ledger: Ledger, clock: FakeClock) -> Job:
    """Three 10 s chunks on w1, w2, w3; w2's and w3's were done in 5 s (0.5 s a second of
    audio); w1's has run 11 s, over BACKUP_AFTER (2) × 0.5 × 10 s."""
    make_episode(ledger, "ep1", [10.0, 10.0, 10.0])
    slow, *fast = (claim(ledger, w) for w in ("w1", "w2", "w3"))
    assert slow is not None
    clock.advance(5)
    for job in fast:
        assert job is not None
        ledger.complete(job.chunk_id, job.lease_token, result=result("fast"))
    clock.advance(6)
    return slow


def test_an_idle_worker_backs_up_the_straggler_once(
    ledger: Ledger, clock: FakeClock, straggler: Job
) -> None:
    assert claim(ledger, "w2", backups=False) is None, "backups only when asked for"
    assert claim(ledger, "w1") is None, "never a backup of one's own chunk"
    backup = claim(ledger, "w2")
    assert backup is not None
    assert (backup.chunk_id, backup.attempt) == (straggler.chunk_id, straggler.attempt)
    assert backup.lease_token != straggler.lease_token
    assert claim(ledger, "w3") is None, "one backup per chunk"
    chunk = ledger.chunk(straggler.chunk_id)
    assert (chunk["state"], chunk["worker_id"], chunk["attempt"]) == ("leased", "w1", 1)


def test_a_local_worker_never_backs_up_another_local_workers_chunk(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Local workers share this machine's cores: a backup would slow the chunk it races
    (the real podcast's local run decoded two chunks twice). Across kinds it still pays."""
    make_episode(ledger, "ep1", [10.0, 10.0, 10.0])
    slow = claim(ledger, "local-1", kind=WorkerKind.LOCAL)
    fast = claim(ledger, "local-2", kind=WorkerKind.LOCAL)
    assert slow is not None and fast is not None
    clock.advance(5)
    ledger.complete(fast.chunk_id, fast.lease_token, result=result("fast"))
    last = claim(ledger, "local-2", kind=WorkerKind.LOCAL)
    assert last is not None
    clock.advance(4)
    ledger.complete(last.chunk_id, last.lease_token, result=result("fast"))
    clock.advance(6)  # local-1's chunk has run 15 s, three times the others' 5 s
    assert claim(ledger, "local-2", kind=WorkerKind.LOCAL) is None
    backup = claim(ledger, "box", kind=WorkerKind.REMOTE)  # a joined worker may race it
    assert backup is not None and backup.chunk_id == slow.chunk_id


def test_no_backup_before_the_chunk_runs_long(ledger: Ledger, clock: FakeClock) -> None:
    make_episode(ledger, "ep1", [10.0, 10.0])
    first, second = claim(ledger, "w1"), claim(ledger, "w2")
    assert first is not None and second is not None
    assert claim(ledger, "w3") is None, "nothing done yet: no measure of long"
    clock.advance(5)
    ledger.complete(second.chunk_id, second.lease_token, result=result("x"))
    clock.advance(4.9)  # 9.9 s: under 2 × 0.5 × 10 s
    assert claim(ledger, "w2") is None
    clock.advance(0.2)
    backup = claim(ledger, "w2")
    assert backup is not None and backup.chunk_id == first.chunk_id


def test_no_backup_while_an_episode_is_still_being_cut(ledger: Ledger, clock: FakeClock) -> None:
    make_episode(ledger, "ep1", [10.0, 10.0], finish=False)
    first, second = claim(ledger, "w1"), claim(ledger, "w2")
    assert first is not None and second is not None
    clock.advance(5)
    ledger.complete(second.chunk_id, second.lease_token, result=result("x"))
    clock.advance(20)  # 25 s in: long, but more chunks may come
    assert claim(ledger, "w2") is None
    ledger.finish_chunking("ep1", duration=20.0, chunk_count=2)
    assert claim(ledger, "w2") is not None


def test_the_backups_result_wins_and_the_straggler_is_fenced_off(
    ledger: Ledger, straggler: Job
) -> None:
    backup = claim(ledger, "w2")
    assert backup is not None
    ledger.heartbeat(backup.chunk_id, backup.lease_token, lease_seconds=LEASE)
    assert ledger.complete(backup.chunk_id, backup.lease_token, result=result("b")) == "stored"
    with pytest.raises(LeaseLost):
        ledger.heartbeat(straggler.chunk_id, straggler.lease_token, lease_seconds=LEASE)
    with pytest.raises(LeaseLost):
        ledger.complete(straggler.chunk_id, straggler.lease_token, result=result("late"))
    with pytest.raises(LeaseLost):
        ledger.release(straggler.chunk_id, straggler.lease_token)
    chunk = ledger.chunk(straggler.chunk_id)
    assert (chunk["state"], chunk["worker_id"]) == ("done", "w2")
    assert stored_text(ledger, straggler.chunk_id) == "b"
    assert ledger.complete(backup.chunk_id, backup.lease_token, result=result("b")) == "duplicate"


def test_the_stragglers_result_wins_and_the_backup_is_fenced_off(
    ledger: Ledger, straggler: Job
) -> None:
    backup = claim(ledger, "w2")
    assert backup is not None
    ledger.heartbeat(straggler.chunk_id, straggler.lease_token, lease_seconds=LEASE)
    assert ledger.complete(straggler.chunk_id, straggler.lease_token, result=result("s")) == (
        "stored"
    )
    with pytest.raises(LeaseLost):
        ledger.heartbeat(backup.chunk_id, backup.lease_token, lease_seconds=LEASE)
    with pytest.raises(LeaseLost):
        ledger.complete(backup.chunk_id, backup.lease_token, result=result("late"))
    with pytest.raises(LeaseLost):
        ledger.fail(backup.chunk_id, backup.lease_token, error="x", max_attempts=3)
    chunk = ledger.chunk(straggler.chunk_id)
    assert (chunk["state"], chunk["worker_id"]) == ("done", "w1")
    assert stored_text(ledger, straggler.chunk_id) == "s"


def test_a_failed_or_released_backup_leaves_the_chunk_to_its_lease(
    ledger: Ledger, straggler: Job
) -> None:
    backup = claim(ledger, "w2")
    assert backup is not None
    assert ledger.fail(backup.chunk_id, backup.lease_token, error="oom", max_attempts=3) == (
        "leased"
    )
    chunk = ledger.chunk(straggler.chunk_id)
    assert (chunk["state"], chunk["attempt"], chunk["lease_token"]) == (
        "leased",
        1,
        straggler.lease_token,
    )
    again = claim(ledger, "w3")  # the chunk may be backed up anew
    assert again is not None and again.lease_token != backup.lease_token
    ledger.release(again.chunk_id, again.lease_token)
    assert ledger.chunk(straggler.chunk_id)["lease_token"] == straggler.lease_token
    with pytest.raises(LeaseLost):
        ledger.complete(again.chunk_id, again.lease_token, result=result("x"))
    ledger.complete(straggler.chunk_id, straggler.lease_token, result=result("s"))


def test_a_reclaimed_chunk_fences_off_its_old_backup(
    ledger: Ledger, clock: FakeClock, straggler: Job
) -> None:
    backup = claim(ledger, "w2")
    assert backup is not None
    ledger.release(straggler.chunk_id, straggler.lease_token)  # the straggler's machine stops
    fresh = claim(ledger, "w3")
    assert fresh is not None and fresh.chunk_id == straggler.chunk_id
    with pytest.raises(LeaseLost):
        ledger.complete(backup.chunk_id, backup.lease_token, result=result("old backup"))
    ledger.complete(fresh.chunk_id, fresh.lease_token, result=result("fresh"))
    assert stored_text(ledger, fresh.chunk_id) == "fresh"


# Through the worker API ---------------------------------------------------------------------

TOKEN = "backup-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"segments": [{"start": 0.0, "end": 1.0, "text": "x"}], "model": "tiny.en"}


@pytest.fixture
def api(tmp_path: Path, home: Path, ledger: Ledger, clock: FakeClock) -> Iterator[TestClient]:
    make_episode(ledger, "ep1", [10.0, 10.0])
    samples = np.zeros(16_000, dtype=np.int16)
    for chunk in ledger.chunks("ep1"):
        write_wav(Path(chunk["audio_path"]), samples)
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=tmp_path / "episodes",
        lease_seconds=LEASE,
        backups=True,
        clock=clock,
    )
    with TestClient(create_app(config)) as client:
        yield client
    config.close()


def post_claim(client: TestClient, worker: str) -> dict:
    reply = client.post("/v1/claim", json={"worker": {"id": worker}}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_the_worker_api_serves_a_backup_and_refuses_the_losers_result(
    api: TestClient, clock: FakeClock
) -> None:
    slow, fast = post_claim(api, "w1")["job"], post_claim(api, "w2")["job"]
    clock.advance(5)
    done = api.post(
        f"/v1/jobs/{fast['chunk_id']}/result",
        json={"lease_token": fast["lease_token"], "result": BODY},
        headers=AUTH,
    )
    assert done.status_code == 200
    assert post_claim(api, "w2")["status"] == "wait"  # 5 s in: not long yet
    clock.advance(6)
    backup = post_claim(api, "w2")["job"]
    assert backup["chunk_id"] == slow["chunk_id"]
    audio = api.get(backup["audio_url"], headers={**AUTH, "X-Lease-Token": backup["lease_token"]})
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    won = api.post(
        f"/v1/jobs/{backup['chunk_id']}/result",
        json={"lease_token": backup["lease_token"], "result": BODY},
        headers=AUTH,
    )
    assert won.json() == {"status": "stored"}
    for path, body in [
        ("heartbeat", {"lease_token": slow["lease_token"]}),
        ("result", {"lease_token": slow["lease_token"], "result": BODY}),
    ]:
        lost = api.post(f"/v1/jobs/{slow['chunk_id']}/{path}", json=body, headers=AUTH)
        assert lost.status_code == 409, (path, lost.text)
    stale = api.get(slow["audio_url"], headers={**AUTH, "X-Lease-Token": slow["lease_token"]})
    assert stale.status_code == 409
    assert post_claim(api, "w1")["status"] == "done"
