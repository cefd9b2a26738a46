"""A batched claim's fair share (whisperfarm.ledger.shares): pure arithmetic on what is
claimable and what each worker holds; the ledger's use of it is in test_ledger_queue.py."""

from __future__ import annotations

import pytest

from whisperfarm.ledger.shares import Holding, fair_share

SPEED = 0.04  # seconds of decoding per second of audio: a batch of 4 × 25 s takes 4 s


def test_before_the_run_has_a_speed_the_work_left_is_split_evenly() -> None:
    """Nothing done yet: other workers' leases are taken to be about to end."""
    other = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=None)
    share = fair_share([25.0] * 4, None, [other], now=0.1, speed=None, fleet=2, limit=4)
    assert share == 2
    alone = fair_share([25.0] * 3, None, [], now=0.0, speed=None, fleet=0, limit=4)
    assert alone == 3


def test_a_worker_that_has_just_claimed_a_batch_is_not_counted_as_free() -> None:
    """The sample's third claim: one worker took 4 chunks 0.3 s ago (4 s of decoding);
    the other, asking now for the 4 left, takes them all instead of 2 now and 1 and 1
    later, decoded in smaller batches."""
    other = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=SPEED)
    share = fair_share([25.0] * 4, None, [other], now=0.3, speed=SPEED, fleet=2, limit=4)
    assert share == 4


def test_a_batch_nearly_decoded_leaves_the_tail_to_be_split() -> None:
    """The 20-minute episode's last claim: the other worker's batch is 3.5 of its 4 s in,
    so taking all 4 chunks left would leave it idle for most of their decode."""
    other = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=SPEED)
    share = fair_share([25.0] * 4, None, [other], now=3.5, speed=SPEED, fleet=2, limit=4)
    assert share == 2


def test_a_slow_worker_has_more_left_of_the_same_audio() -> None:
    """Each worker's own speed, once it has one: a machine at half the run's speed is 2 s
    into 8 s of decoding, not 2 s into 4."""
    fast = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=SPEED)
    slow = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=2 * SPEED)
    claimable = [25.0] * 6
    at_fast = fair_share(claimable, None, [fast], now=2.0, speed=SPEED, fleet=2, limit=8)
    at_slow = fair_share(claimable, None, [slow], now=2.0, speed=SPEED, fleet=2, limit=8)
    assert (at_fast, at_slow) == (4, 5)  # levels [0, 50] and [0, 75] under 150 s of audio


def test_what_the_claimer_holds_counts_against_its_share() -> None:
    """A prefetching worker claims while its own batch decodes: it takes what levels it
    with the others, not half of what is claimable on top of what it holds."""
    mine = Holding(chunks=4, audio=100.0, claimed_at=0.0, speed=SPEED)
    share = fair_share([25.0] * 8, mine, [], now=0.0, speed=SPEED, fleet=2, limit=4)
    assert share == 2  # 200 s over [100, 0]: level 150, 50 s of it the claimer's
    count = fair_share([25.0] * 8, mine, [], now=0.0, speed=None, fleet=2, limit=4)
    assert count == 2  # the same, by count, before the speed is known


@pytest.mark.parametrize("now", [0.0, 1.0, 5.0, 50.0])
def test_a_share_is_at_least_one_and_at_most_the_limit(now: float) -> None:
    busy = Holding(chunks=1, audio=10.0, claimed_at=0.0, speed=SPEED)
    mine = Holding(chunks=8, audio=200.0, claimed_at=now, speed=SPEED)
    assert fair_share([25.0], mine, [busy], now=now, speed=SPEED, fleet=2, limit=4) == 1
    plenty = [25.0] * 100
    assert fair_share(plenty, None, [busy], now=now, speed=SPEED, fleet=2, limit=4) == 4
