"""The scaling policy: pure functions, so every case is a plain assertion."""

from __future__ import annotations

import pytest

from whisperfarm.fly.policy import (
    CreateRate,
    FleetLimits,
    FleetState,
    create_times,
    machine_speed,
    machines_to_start,
    must_stop,
    plan,
)

PRICE = 0.0000239  # performance-2x
LIMITS = FleetLimits(max_machines=20, budget=None, price_per_second=PRICE, speed=10.0)


def state(
    audio: float = 3600, chunks: int = 140, machines: int = 0, spent: float = 0.0
) -> FleetState:
    return FleetState(audio, chunks, machines, spent)


def test_scales_up_to_the_cap_while_there_is_work() -> None:
    assert machines_to_start(state(), LIMITS) == 20
    assert machines_to_start(state(audio=36_000, chunks=1400, machines=15), LIMITS) == 5
    assert machines_to_start(state(machines=20), LIMITS) == 0


def test_never_more_machines_than_chunks_left() -> None:
    assert machines_to_start(state(audio=100, chunks=4), LIMITS) == 4


def test_no_work_no_machines() -> None:
    assert machines_to_start(state(audio=0, chunks=0), LIMITS) == 0


def test_no_new_machine_when_the_running_ones_finish_first() -> None:
    # 2 machines finish 300 s of audio at 10x in 15 s, before a new one would be ready.
    assert machines_to_start(state(audio=300, chunks=12, machines=2), LIMITS) == 0
    # With far more work, a new machine pays off.
    assert machines_to_start(state(audio=30_000, chunks=1000, machines=2), LIMITS) == 18


def test_budget_limits_how_many_start() -> None:
    limits = FleetLimits(20, budget=0.02, price_per_second=PRICE, speed=10.0)
    n = machines_to_start(state(), limits)
    assert 0 < n < 20
    # What they are expected to cost fits the budget.
    work = 3600 / (20 * 10.0)
    assert n * (limits.start_latency + work + limits.stop_margin) * PRICE <= 0.02


def test_spent_money_reduces_what_can_start() -> None:
    limits = FleetLimits(20, budget=0.05, price_per_second=PRICE, speed=10.0)
    assert machines_to_start(state(spent=0.04), limits) < machines_to_start(state(), limits)
    assert machines_to_start(state(spent=0.05), limits) == 0


def test_a_budget_too_small_for_the_whole_job_still_buys_one_machine_for_part_of_it() -> None:
    limits = FleetLimits(5, budget=0.004, price_per_second=PRICE, speed=10.0)
    assert machines_to_start(state(audio=36_000, chunks=1400), limits) == 1
    tiny = FleetLimits(5, budget=0.0001, price_per_second=PRICE, speed=10.0)
    assert machines_to_start(state(audio=36_000, chunks=1400), tiny) == 0


def test_the_one_machine_a_small_budget_buys_must_pay_for_a_chunk_as_long_as_the_run_cuts() -> None:
    """Start (45 s), one chunk at 10× and the stop margin (30 s): 77.7 s of a machine for a
    27-s chunk, 81 s for a 60-s one; a budget of 79 s pays for the first only."""
    budget = 79 * PRICE
    cut_27, cut_60 = (
        FleetLimits(5, budget=budget, price_per_second=PRICE, speed=10.0, longest_chunk=seconds)
        for seconds in (27, 60)
    )
    assert machines_to_start(state(audio=36_000, chunks=1400), cut_27) == 1
    assert machines_to_start(state(audio=36_000, chunks=1400), cut_60) == 0


def test_must_stop_before_the_cap_counting_the_stop_margin() -> None:
    limits = FleetLimits(10, budget=0.10, price_per_second=0.001, speed=10.0, stop_margin=10)
    assert not must_stop(state(machines=2, spent=0.07), limits)
    assert must_stop(state(machines=2, spent=0.081), limits)  # 0.081 + 2 × 10 s × 0.001
    assert must_stop(state(machines=2, spent=0.075), limits, lookahead=5)
    assert not must_stop(state(machines=0, spent=0.2), limits)
    assert not must_stop(state(machines=5, spent=99), LIMITS)  # no budget, no cap


def test_plan_estimates_time_and_cost_with_machines_created_at_flys_rate() -> None:
    """20 machines: three created at once, then one a second (the 20th at 17 s); each
    claims 45 s after its create. 3,600 s of audio at 10× is 360 machine-seconds: with all
    20 working, 20 T - (20 × 45 + 153) = 360, so the work is done at T = 70.65 s."""
    p = plan(3600, 140, LIMITS)
    assert p.machines == 20
    ramp = sum([0, 0, 0, *range(1, 18)])  # 153
    done = (360 + 20 * 45 + ramp) / 20
    assert p.wall_seconds == pytest.approx(done + 2.7)  # + the longest chunk (27 s) at 10×
    assert p.cost == pytest.approx((20 * (done + 30) - ramp) * PRICE)
    assert p.fits_budget
    capped = plan(3600, 140, FleetLimits(20, budget=0.01, price_per_second=PRICE, speed=10.0))
    assert capped.machines < 20


def test_a_warm_pool_removes_the_create_ramp_from_the_plan() -> None:
    created, pooled = plan(3600, 140, LIMITS), plan(3600, 140, LIMITS, ready=20)
    assert pooled.wall_seconds == pytest.approx(45 + 3600 / 200 + 2.7)
    assert pooled.cost == pytest.approx(20 * (45 + 18 + 30) * PRICE)
    assert pooled.wall_seconds < created.wall_seconds
    some = plan(3600, 140, LIMITS, ready=10)
    assert pooled.wall_seconds < some.wall_seconds < created.wall_seconds


def test_the_plan_counts_no_machine_that_would_join_after_the_work_is_done() -> None:
    """100 machines for 100 short chunks: the last creates come after the first machines
    have finished everything, so they are neither made nor billed."""
    limits = FleetLimits(100, budget=None, price_per_second=PRICE, speed=10.0)
    p = plan(1000, 100, limits)
    # 14 machines (joining at 45 ×3, 46 … 56) finish 100 machine-seconds at 56.86 s,
    # before the 15th could join (57 s).
    done = (100 + 3 * 45 + sum(range(46, 57))) / 14
    assert p.machines == 14
    assert p.wall_seconds == pytest.approx(done + 2.7)
    assert p.cost == pytest.approx((14 * (done + 30) - sum(range(1, 12))) * PRICE)


def test_create_times_follow_the_burst_then_the_rate() -> None:
    assert create_times(6) == [0, 0, 0, 1, 2, 3]
    assert create_times(6, ready=4) == [0, 0, 0, 0, 0, 0]
    assert create_times(3, ready=5) == [0, 0, 0]
    assert create_times(8, ready=2) == [0, 0, 0, 0, 0, 1, 2, 3]


def test_the_create_rate_credits_no_refill_while_a_create_was_in_flight() -> None:
    rate = CreateRate(now=100.0)
    assert [rate.take(100.0) for _ in range(3)] == [True, True, True]
    rate.settle(100.6)  # the last create's answer came 0.6 s later: Fly saw it up to then
    assert not rate.take(101.0)  # a second after the send, but 0.4 s after the answer
    assert not rate.take(101.5)
    assert rate.take(101.6)
    assert not rate.take(101.0)  # an earlier clock reading never refills or drains


def test_the_create_rate_allows_a_burst_then_one_a_second() -> None:
    rate = CreateRate(now=100.0)
    assert [rate.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert rate.wait() == pytest.approx(1.0)
    assert not rate.take(100.5)
    assert rate.take(101.0)
    assert rate.take(110.0) and rate.take(110.0) and rate.take(110.0)
    assert not rate.take(110.0)  # the burst refills to three, no more


def test_machine_speed_grows_with_cpus_sublinearly() -> None:
    one, four = machine_speed("small.en", 1), machine_speed("small.en", 4)
    assert one < four < 4 * one
    assert machine_speed("unknown-model", 2) < machine_speed("tiny.en", 2)
    assert machine_speed("tiny.en", 1, per_cpu=3.0) == 3.0


def test_with_a_probe_one_machine_goes_first_and_the_rest_once_its_worker_claims() -> None:
    assert create_times(6, probe=45.0) == [0, 45, 45, 45, 46, 47]
    assert create_times(6, ready=4, probe=45.0) == [0, 45, 45, 45, 45, 45]
    assert create_times(1, probe=45.0) == [0]
    assert create_times(3, ready=5, probe=10.0) == [0, 10, 10]


def test_the_plan_counts_the_probe_wait_in_time_and_money() -> None:
    """20 machines: one at 0, the others asked for when its worker claims (45 s), then
    three at once and one a second (the 20th at 45 + 16 s); each claims 45 s after."""
    direct, probed = plan(3600, 140, LIMITS), plan(3600, 140, LIMITS, probe=True)
    requests = [0, *(45 + at for at in [0, 0, 0, *range(1, 17)])]
    done = (360 + sum(at + 45 for at in requests)) / 20
    assert probed.machines == 20
    assert probed.wall_seconds == pytest.approx(done + 2.7)
    assert probed.cost == pytest.approx(sum(done - at + 30 for at in requests) * PRICE)
    assert probed.wall_seconds > direct.wall_seconds
    one = FleetLimits(max_machines=1, budget=None, price_per_second=PRICE, speed=10.0)
    assert plan(3600, 140, one, probe=True) == plan(3600, 140, one)  # nothing waits for it
