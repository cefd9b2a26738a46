"""Which chunk a claim takes, over queued chunks and expired leases in several episodes, and
that finding it walks the queue index instead of sorting the queue on every claim."""

from __future__ import annotations

import json
from typing import Any

from tests.support.clock import FakeClock
from tests.support.episodes import make_episode
from whisperfarm.ledger import Ledger, WorkerInfo
from whisperfarm.ledger.queue import _NEXT_CHUNK

LEASE = 60.0


def take(ledger: Ledger, episodes: list[str], worker: str = "w1") -> tuple[str, int]:
    claim = ledger.claim(episodes, WorkerInfo(worker), lease_seconds=LEASE, max_attempts=3)
    assert claim.job is not None, claim
    return claim.job.episode_id, claim.job.idx


def test_longest_chunk_first_across_the_episodes_in_scope(ledger: Ledger) -> None:
    make_episode(ledger, "a", [10.0, 25.0, 12.0])
    make_episode(ledger, "b", [20.0, 28.0])
    make_episode(ledger, "outside", [29.0])  # longest of all, but not in this run
    order = [take(ledger, ["a", "b"]) for _ in range(5)]
    assert order == [("b", 1), ("a", 1), ("b", 0), ("a", 2), ("a", 0)]


def test_an_expired_lease_competes_with_the_queue_by_length(
    ledger: Ledger, clock: FakeClock
) -> None:
    make_episode(ledger, "a", [10.0, 25.0, 15.0, 20.0])
    assert take(ledger, ["a"]) == ("a", 1)  # 25 s, leased
    assert take(ledger, ["a"]) == ("a", 3)  # 20 s, leased
    clock.advance(LEASE + 1)  # both leases expire; 15 s and 10 s are still queued
    assert take(ledger, ["a"], "w2") == ("a", 1)  # the expired 25 s beats the queue
    assert take(ledger, ["a"], "w2") == ("a", 3)  # and so does the expired 20 s
    assert take(ledger, ["a"], "w2") == ("a", 2)
    assert take(ledger, ["a"], "w2") == ("a", 0)


def test_a_longer_queued_chunk_beats_a_shorter_expired_lease(
    ledger: Ledger, clock: FakeClock
) -> None:
    make_episode(ledger, "a", [10.0, 25.0])
    first = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3).job
    assert first is not None and first.idx == 1
    assert take(ledger, ["a"]) == ("a", 0)
    ledger.release(first.chunk_id, first.lease_token)  # 25 s queued again
    clock.advance(LEASE + 1)  # 10 s: lease expired
    assert take(ledger, ["a"], "w2") == ("a", 1)
    assert take(ledger, ["a"], "w2") == ("a", 0)


def test_the_next_chunk_comes_from_the_queue_index_not_a_sort(ledger: Ledger) -> None:
    """A claim costs the same with ten thousand chunks queued as with ten: the queued
    candidate is read off the chunks_queue index in claim order."""
    make_episode(ledger, "a", [20.0, 25.0])
    plan = [
        row[-1]
        for row in ledger.conn.execute(
            f"EXPLAIN QUERY PLAN {_NEXT_CHUNK}", (None, None, None, 0.0, json.dumps(["a"]))
        )
    ]
    queued = [line for line in plan if "chunks_queue" in line]
    assert queued, plan
    assert all("(state=?)" in line for line in queued), plan


def test_an_episode_whose_cut_fails_takes_its_queued_chunks_out_of_the_queue(
    ledger: Ledger,
) -> None:
    """A cut that fails part way (a truncated file) leaves no chunk for workers to
    transcribe: the episode reads failed and never chunked, as 'retry' then says."""
    make_episode(ledger, "a", [10.0, 20.0], finish=False)
    make_episode(ledger, "b", [5.0])
    ledger.fail_chunking("a", error="a.mp3 looks truncated")
    assert [take(ledger, ["a", "b"])] == [("b", 0)]
    claim = ledger.claim(["a", "b"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3)
    assert claim.job is None
    episode = ledger.episode("a")
    assert (episode["state"], episode["error"], episode["chunk_count"]) == (
        "failed",
        "a.mp3 looks truncated",
        None,
    )
    assert ledger.chunks("a") == []


def test_a_claim_of_several_takes_them_longest_first_each_under_its_own_lease(
    ledger: Ledger, clock: FakeClock
) -> None:
    make_episode(ledger, "a", [10.0, 25.0, 15.0, 20.0])
    claim = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3, limit=3)
    assert [job.idx for job in claim.jobs] == [1, 3, 2]
    assert claim.job == claim.jobs[0]
    assert len({job.lease_token for job in claim.jobs}) == 3
    for job in claim.jobs:
        chunk = ledger.chunk(job.chunk_id)
        assert (chunk["state"], chunk["attempt"], chunk["lease_token"]) == (
            "leased",
            1,
            job.lease_token,
        )
    rest = ledger.claim(["a"], WorkerInfo("w2"), lease_seconds=LEASE, max_attempts=3, limit=3)
    assert [job.idx for job in rest.jobs] == [0]  # what is left, no more
    second = claim.jobs[1]
    clock.advance(LEASE / 2)
    ledger.heartbeat(second.chunk_id, second.lease_token, lease_seconds=LEASE)
    clock.advance(LEASE / 2 + 1)  # the others' leases expire; the heartbeated one holds
    again = ledger.claim(["a"], WorkerInfo("w2"), lease_seconds=LEASE, max_attempts=3, limit=5)
    # three expired leases are claimable, w1 still works: w2's share is two, the longest
    assert [job.idx for job in again.jobs] == [1, 2]


def test_a_batched_claim_takes_no_more_than_its_share_of_the_tail(ledger: Ledger) -> None:
    """A batch decodes as one: a worker that took all of the tail would decode it alone
    while the others idle (the sample's 4 last chunks went to one worker of two: 5.4 s
    alone at the end where 2.7 s each would do)."""
    make_episode(ledger, "a", [20.0] * 10)
    first = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3, limit=4)
    assert len(first.jobs) == 4  # alone: a full batch
    second = ledger.claim(["a"], WorkerInfo("w2"), lease_seconds=LEASE, max_attempts=3, limit=4)
    assert len(second.jobs) == 3  # 6 claimable, w1 working: half
    third = ledger.claim(["a"], WorkerInfo("w3"), lease_seconds=LEASE, max_attempts=3, limit=4)
    assert len(third.jobs) == 1  # 3 claimable, three workers
    for job in first.jobs:  # w1 finishes its batch: one left, two others still working
        ledger.complete(job.chunk_id, job.lease_token, result='{"segments": []}')
    last = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3, limit=4)
    assert len(last.jobs) == 1  # 2 claimable, w2 and w3 working: a third, rounded up


def test_once_chunks_are_done_a_share_counts_what_the_others_have_left(
    ledger: Ledger, clock: FakeClock
) -> None:
    """With the run's speed known (seconds of decoding per second of audio, from the
    results' busy time), a worker that has just claimed a batch is not free: the next
    claim takes a full batch of the 5 left, not 3."""
    make_episode(ledger, "a", [25.0] * 10)

    def claim(worker: str) -> list[Any]:
        return list(
            ledger.claim(
                ["a"],
                WorkerInfo(worker),
                lease_seconds=LEASE,
                max_attempts=3,
                limit=4,
                fleet_size=2,
            ).jobs
        )

    (first,) = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3).jobs
    clock.advance(1.0)
    # 25 s of audio decoded in 1 s: 0.04 s a second of audio, 4 s for a batch of 4
    ledger.complete(first.chunk_id, first.lease_token, result='{"segments": []}', busy_seconds=1.0)
    batch = claim("w1")
    assert len(batch) == 4  # 9 claimable, nobody else at work: a full batch
    clock.advance(0.3)
    assert len(claim("w2")) == 4  # 5 claimable; w1 has 3.7 s of its batch left


def test_a_batch_nearly_decoded_is_almost_free(ledger: Ledger, clock: FakeClock) -> None:
    """The other side: the other worker's batch is 3.5 of its 4 s in, so the claim takes
    half of the 4 left, not all of them (it would decode them alone for 4 s while the other
    idled)."""
    make_episode(ledger, "a", [25.0] * 9)
    (first,) = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3).jobs
    clock.advance(1.0)
    ledger.complete(first.chunk_id, first.lease_token, result='{"segments": []}', busy_seconds=1.0)
    batch = ledger.claim(
        ["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3, limit=4, fleet_size=2
    )
    assert len(batch.jobs) == 4
    clock.advance(3.5)
    tail = ledger.claim(
        ["a"], WorkerInfo("w2"), lease_seconds=LEASE, max_attempts=3, limit=4, fleet_size=2
    )
    assert len(tail.jobs) == 2


def test_a_batched_claim_shares_the_queue_with_the_fleet_still_booting(ledger: Ledger) -> None:
    """The first of a hundred planned machines to boot finds nobody holding a lease: it
    must not take 4 of a 1-hour episode's 130 chunks when each machine's share is 2."""
    make_episode(ledger, "a", [25.0] * 130)

    def claim(worker: str, fleet_size: int) -> int:
        jobs = ledger.claim(
            ["a"],
            WorkerInfo(worker),
            lease_seconds=LEASE,
            max_attempts=3,
            limit=4,
            fleet_size=fleet_size,
        ).jobs
        return len(jobs)

    assert claim("m1", 100) == 2  # 130 over 100 machines, rounded up
    assert claim("m2", 50) == 3  # 128 over 50 (over the lease holders: 64, a full batch)
    assert claim("m3", 0) == 4  # no fleet known: the lease holders alone (125 over 3)


def test_a_prefetching_worker_counts_what_it_holds_against_its_share(ledger: Ledger) -> None:
    """A prefetching worker claims again while its batch decodes: its share is of the
    work left, what it holds included, or it would hold 8 of 12 while the other idled."""
    make_episode(ledger, "a", [20.0] * 12)

    def claim(worker: str) -> int:
        return len(
            ledger.claim(
                ["a"],
                WorkerInfo(worker),
                lease_seconds=LEASE,
                max_attempts=3,
                limit=4,
                fleet_size=2,
            ).jobs
        )

    assert claim("a1") == 4  # 12 over 2: 6, a batch of 4
    assert claim("a1") == 2  # its prefetch: 8 left + 4 held over 2 = 6, less the 4 held
    assert claim("b1") == 3  # 6 left over 2
    assert claim("b1") == 1  # 3 left + 3 held over 2 = 3, less 3 held: still one


def test_expired_and_other_episodes_leases_are_not_workers_at_work(
    ledger: Ledger, clock: FakeClock
) -> None:
    """Only live leases in the run's scope count as other workers sharing the queue."""
    make_episode(ledger, "a", [20.0] * 8)
    make_episode(ledger, "outside", [20.0] * 2)
    ledger.claim(["outside"], WorkerInfo("elsewhere"), lease_seconds=LEASE, max_attempts=3)
    gone = ledger.claim(["a"], WorkerInfo("gone"), lease_seconds=LEASE, max_attempts=3)
    assert gone.job is not None
    clock.advance(LEASE + 1)  # the "gone" worker's lease expires; "elsewhere"'s too
    ledger.claim(["outside"], WorkerInfo("elsewhere"), lease_seconds=LEASE, max_attempts=3)
    claim = ledger.claim(["a"], WorkerInfo("w1"), lease_seconds=LEASE, max_attempts=3, limit=8)
    assert len(claim.jobs) == 8  # alone in scope: everything, the expired one included
