"""The scaling policy: pure functions, so every case is a plain assertion."""

from __future__ import annotations

import pytest

from whisperfarm.fly.policy import (
    FleetLimits,
    FleetState,
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


def test_must_stop_before_the_cap_counting_the_stop_margin() -> None:
    limits = FleetLimits(10, budget=0.10, price_per_second=0.001, speed=10.0, stop_margin=10)
    assert not must_stop(state(machines=2, spent=0.07), limits)
    assert must_stop(state(machines=2, spent=0.081), limits)  # 0.081 + 2 × 10 s × 0.001
    assert must_stop(state(machines=2, spent=0.075), limits, lookahead=5)
    assert not must_stop(state(machines=0, spent=0.2), limits)
    assert not must_stop(state(machines=5, spent=99), LIMITS)  # no budget, no cap


def test_plan_estimates_time_and_cost() -> None:
    p = plan(3600, 140, LIMITS)
    assert p.machines == 20
    assert p.wall_seconds == pytest.approx(45 + 3600 / 200 + 2.9)
    assert p.cost == pytest.approx(20 * (45 + 18 + 30) * PRICE)
    assert p.fits_budget
    capped = plan(3600, 140, FleetLimits(20, budget=0.01, price_per_second=PRICE, speed=10.0))
    assert capped.machines < 20


def test_machine_speed_grows_with_cpus_sublinearly() -> None:
    one, four = machine_speed("small.en", 1), machine_speed("small.en", 4)
    assert one < four < 4 * one
    assert machine_speed("unknown-model", 2) < machine_speed("tiny.en", 2)
    assert machine_speed("tiny.en", 1, per_cpu=3.0) == 3.0
