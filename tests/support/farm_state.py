"""A ledger in a known state, for the status, page and episode tests.

At ``NOW`` (the FakeClock's start) run ``r1`` has been running for ten minutes on Fly with
a budget of one cent, which it has overspent:

    interview  10 × 30 s chunks: 6 done, 1 leased by machine m1, 1 leased by machine m2
               (whose heartbeat stopped 400 s ago: stale), 2 queued
    lecture    4 × 30 s chunks, all done (3 by m1, 1 by the remote worker 'laptop'): done
    broken     3 × 30 s chunks: 2 done by m2, 1 dead: failed

Machines: m1 started 590 s ago and runs; m2 ran 390 s and stopped; m3 was created, never
started. An older local run ``r0`` transcribed ``archive`` a day earlier.
"""

from __future__ import annotations

import json

from tests.support.clock import FakeClock
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo

NOW = 1_000_000.0
LEASE = 60.0
PRICE = 0.0000239  # performance-2x, dollars per second

M1 = "d8901a2b3c4d5e"
M2 = "e7812f3a4b5c6d"
M3 = "f1122aa33bb44c"
FLY1 = WorkerInfo(M1, kind="fly", host="h1", machine_id=M1, region="ams")
FLY2 = WorkerInfo(M2, kind="fly", host="h2", machine_id=M2, region="ams")
LAPTOP = WorkerInfo("laptop-4242", kind="remote", host="laptop")
LOCAL = WorkerInfo("local-aa11-0", kind="local", host="desk")

EPISODES = {"interview": "1a1a1a1a1a1a", "lecture": "2b2b2b2b2b2b", "broken": "3c3c3c3c3c3c"}
ARCHIVE = "4d4d4d4d4d4d"


def add_episode(
    ledger: Ledger,
    episode_id: str,
    name: str,
    chunks: int,
    *,
    length: float = 30.0,
    options: dict | None = None,
) -> None:
    ledger.create_episode(
        episode_id=episode_id,
        name=name,
        source=f"/audio/{name}.mp3",
        content_hash=f"hash-{episode_id}",
        model="tiny.en",
        options=options or {"language": "en", "beam_size": 5},
    )
    for idx in range(chunks):
        start = idx * length
        plan = ChunkPlan(idx, start, start + length, start, start + length)
        ledger.add_chunk(episode_id, plan, f"/chunks/{episode_id}/{idx:05d}.wav")
    ledger.finish_chunking(episode_id, duration=chunks * length, chunk_count=chunks)


def result_for(episode: str, idx: int, length: float = 30.0) -> dict:
    """What a worker would post for chunk ``idx``: two segments, times relative to it."""
    return {
        "language": "en",
        "segments": [
            {"start": 1.0, "end": 9.0, "text": f" {episode} part {idx} begins."},
            {"start": 11.0, "end": length - 2.0, "text": f" {episode} part {idx} ends."},
        ],
    }


def work(
    ledger: Ledger,
    clock: FakeClock,
    episode_id: str,
    worker: WorkerInfo,
    *,
    at: float,
    took: float = 20.0,
) -> int:
    """``worker`` claims the next chunk of the episode at ``at`` and finishes it."""
    clock.now = at
    job = ledger.claim([episode_id], worker, lease_seconds=LEASE, max_attempts=3).job
    assert job is not None
    clock.now = at + took
    result = json.dumps(result_for(ledger.episode(episode_id)["name"], job.idx))
    ledger.complete(job.chunk_id, job.lease_token, result=result, busy_seconds=took)
    return job.chunk_id


def add_machine(
    ledger: Ledger,
    machine_id: str,
    *,
    run_id: str,
    state: str,
    created: float,
    started: float | None,
    stopped: float | None = None,
    region: str = "ams",
) -> None:
    ledger.db.conn.execute(
        "INSERT INTO machines (id, run_id, name, app, region, size, cpus, memory_mb,"
        " usd_per_second, state, created_at, started_at, stopped_at, updated_at)"
        " VALUES (?, ?, ?, 'wf-test', ?, 'performance-2x', 2, 4096, ?, ?, ?, ?, ?, ?)",
        (
            machine_id,
            run_id,
            f"wf-{machine_id[:6]}",
            region,
            PRICE,
            state,
            created,
            started,
            stopped,
            stopped or started or created,
        ),
    )


def build(ledger: Ledger, clock: FakeClock) -> None:
    """Fill ``ledger`` with the state the module docstring draws; leaves the clock at NOW."""
    # A day earlier: run r0 transcribed 'archive' on a local worker.
    clock.now = NOW - 90_000
    add_episode(ledger, ARCHIVE, "archive", 2)
    ledger.start_run("r0", backend="1 local worker × 4 threads", episode_ids=[ARCHIVE])
    for n in range(2):
        work(ledger, clock, ARCHIVE, LOCAL, at=NOW - 89_900 + n * 30)
    ledger.update_episode(ARCHIVE, state="done", finished_at=NOW - 89_800)
    clock.now = NOW - 89_000
    ledger.end_run("r0", "done")

    # Run r1, on Fly.
    start = NOW - 600
    clock.now = start - 5
    for name, chunks in (("interview", 10), ("lecture", 4), ("broken", 3)):
        add_episode(ledger, EPISODES[name], name, chunks)
    clock.now = start
    ledger.start_run(
        "r1",
        backend="fly: performance-2x × 3 in ams",
        episode_ids=list(EPISODES.values()),
        url="http://127.0.0.1:8765",
        budget=0.01,
    )
    ledger.db.conn.execute("UPDATE runs SET max_machines = 3 WHERE id = 'r1'")
    add_machine(ledger, M1, run_id="r1", state="started", created=start + 2, started=start + 10)
    add_machine(
        ledger,
        M2,
        run_id="r1",
        state="stopped",
        created=start + 2,
        started=start + 10,
        stopped=NOW - 200,
    )
    add_machine(ledger, M3, run_id="r1", state="created", created=start + 3, started=None)

    interview, lecture, broken = EPISODES.values()
    t = start + 20
    for _ in range(3):
        work(ledger, clock, lecture, FLY1, at=t)
        t += 25
    work(ledger, clock, lecture, LAPTOP, at=t)
    clock.now = t + 25
    ledger.update_episode(lecture, state="done", finished_at=clock.now)

    for _ in range(2):
        work(ledger, clock, broken, FLY2, at=t)
        t += 25
    clock.now = t
    dead = ledger.claim([broken], FLY2, lease_seconds=LEASE, max_attempts=1).job
    assert dead is not None
    ledger.fail(dead.chunk_id, dead.lease_token, error="CUDA out of memory\ntrace", max_attempts=1)
    ledger.update_episode(
        broken,
        state="failed",
        error="1 chunk(s) failed after 3 attempts (chunk 2: CUDA out of memory)",
    )

    t = start + 250
    for _ in range(6):
        work(ledger, clock, interview, FLY1, at=t)
        t += 50
    # m1 is on chunk 6 and heartbeating; m2 took chunk 7 at NOW - 400 and was never heard
    # from again (its lease has expired, but nobody has claimed the chunk since).
    clock.now = NOW - 10
    job = ledger.claim([interview], FLY1, lease_seconds=LEASE, max_attempts=3).job
    assert job is not None and job.idx == 6
    clock.now = NOW - 400
    lost = ledger.claim([interview], FLY2, lease_seconds=LEASE, max_attempts=3).job
    assert lost is not None and lost.idx == 7
    clock.now = NOW - 5
    ledger.heartbeat(job.chunk_id, job.lease_token, lease_seconds=LEASE)
    # The laptop asked for work two seconds ago and got none.
    clock.now = NOW - 2
    ledger.claim([], LAPTOP, lease_seconds=LEASE, max_attempts=3)
    clock.now = NOW
