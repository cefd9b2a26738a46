"""A model-based test of the queue: Hypothesis drives workers that claim, heartbeat,
complete, fail, release and crash while the clock jumps, and checks the ledger's
promises after every step:

- no chunk is committed (stored) twice;
- a lease only ever moves forward;
- attempts never exceed the cap;
- once the workers are gone and the clock has passed every lease, a fresh worker drains
  the queue and every chunk ends done or dead.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.support.clock import FakeClock
from whisperfarm.ledger import ChunkPlan, LeaseLost, Ledger, WorkerInfo

CHUNKS = 6
WORKERS = 3
LEASE = 10.0
MAX_ATTEMPTS = 3


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ledger: Ledger | None = None
        self.held: dict[int, tuple[int, str]] = {}  # worker → (chunk id, token)
        self.stored: dict[int, int] = {}  # chunk id → times stored
        self.lease_seen: dict[tuple[int, str], float] = {}

    @initialize(tmp=st.integers(0, 10**9))
    def open_ledger(self, tmp: int) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix=f"wf-model-{tmp}-"))
        self.ledger = Ledger(self.dir / "ledger.db", clock=self.clock)
        self.ledger.create_episode(
            episode_id="ep", name="ep", source="/x", content_hash="h", model="m", options={}
        )
        for idx in range(CHUNKS):
            self.ledger.add_chunk(
                "ep",
                ChunkPlan(idx, idx * 20.0, idx * 20.0 + 20, idx * 20.0, idx * 20.0 + 20),
                f"/audio/{idx}.wav",
            )
        self.ledger.finish_chunking("ep", duration=CHUNKS * 20.0, chunk_count=CHUNKS)

    def teardown(self) -> None:
        if self.ledger is None:
            return
        # Drain: every lease expires, a fresh worker finishes whatever can be finished.
        self.clock.advance(LEASE * 10)
        worker = WorkerInfo("drainer")
        for _ in range(CHUNKS * (MAX_ATTEMPTS + 1)):
            claim = self.ledger.claim(
                ["ep"], worker, lease_seconds=LEASE, max_attempts=MAX_ATTEMPTS
            )
            if claim.status == "done":
                break
            assert claim.status == "job" and claim.job is not None, claim
            self.ledger.complete(claim.job.chunk_id, claim.job.lease_token, result='"r"')
            self._stored(claim.job.chunk_id)
        states = {c["state"] for c in self.ledger.chunks("ep")}
        assert states <= {"done", "dead"}, states
        self.ledger.close()

    def _stored(self, chunk_id: int) -> None:
        self.stored[chunk_id] = self.stored.get(chunk_id, 0) + 1

    @rule(worker=st.integers(0, WORKERS - 1))
    def claim(self, worker: int) -> None:
        assert self.ledger is not None
        claim = self.ledger.claim(
            ["ep"], WorkerInfo(f"w{worker}"), lease_seconds=LEASE, max_attempts=MAX_ATTEMPTS
        )
        if claim.status == "job":
            assert claim.job is not None
            chunk = self.ledger.chunk(claim.job.chunk_id)
            assert chunk["state"] == "leased" and chunk["attempt"] <= MAX_ATTEMPTS
            assert self.stored.get(claim.job.chunk_id, 0) == 0, "a done chunk was handed out"
            self.held[worker] = (claim.job.chunk_id, claim.job.lease_token)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        assert self.ledger is not None
        worker = data.draw(st.sampled_from(sorted(self.held)))
        chunk_id, token = self.held[worker]
        try:
            expires = self.ledger.heartbeat(chunk_id, token, lease_seconds=LEASE)
        except LeaseLost:
            del self.held[worker]
            return
        previous = self.lease_seen.get((chunk_id, token), float("-inf"))
        assert expires >= previous, "a lease moved backwards"
        self.lease_seen[(chunk_id, token)] = expires

    @precondition(lambda self: self.held)
    @rule(data=st.data(), again=st.booleans())
    def complete(self, data: st.DataObject, again: bool) -> None:
        assert self.ledger is not None
        worker = data.draw(st.sampled_from(sorted(self.held)))
        chunk_id, token = self.held.pop(worker)
        try:
            outcome = self.ledger.complete(chunk_id, token, result=json.dumps(token))
        except LeaseLost:
            return
        if outcome == "stored":
            self._stored(chunk_id)
        if again:  # the worker's retry of the same post
            assert self.ledger.complete(chunk_id, token, result='"x"') == "duplicate"
            assert self.ledger.result(chunk_id) == token

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        assert self.ledger is not None
        worker = data.draw(st.sampled_from(sorted(self.held)))
        chunk_id, token = self.held.pop(worker)
        try:
            state = self.ledger.fail(chunk_id, token, error="boom", max_attempts=MAX_ATTEMPTS)
        except LeaseLost:
            return
        assert state in ("queued", "dead")

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        assert self.ledger is not None
        worker = data.draw(st.sampled_from(sorted(self.held)))
        chunk_id, token = self.held.pop(worker)
        try:
            self.ledger.release(chunk_id, token)
        except LeaseLost:
            return
        assert self.ledger.chunk(chunk_id)["state"] == "queued"

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.held)))
        del self.held[worker]  # gone without a word; its lease must expire

    @rule(seconds=st.sampled_from([0.5, 3.0, LEASE / 2, LEASE + 0.1, LEASE * 3]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def committed_at_most_once(self) -> None:
        assert all(count <= 1 for count in self.stored.values()), self.stored

    @invariant()
    def done_chunks_keep_their_result(self) -> None:
        if self.ledger is None:
            return
        for chunk in self.ledger.chunks("ep"):
            assert chunk["attempt"] <= MAX_ATTEMPTS
            if chunk["state"] == "done":
                assert self.ledger.result(chunk["id"]) is not None, chunk
                assert self.stored.get(chunk["id"]) == 1


QueueMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueue = QueueMachine.TestCase
