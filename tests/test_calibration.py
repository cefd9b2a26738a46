"""Measured speeds: folded in after each run, preferred over the built-in table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from whisperfarm.calibration import best, for_settings, measure_run
from whisperfarm.fly.config import describe_plan, estimate, fly_config
from whisperfarm.fly.policy import THREAD_EFFICIENCY, machine_speed
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from whisperfarm.settings import load_settings


def run_with_workers(
    ledger: Ledger, clock: FakeClock, workers: list[tuple[str, str, int, float]]
) -> str:
    """A run whose workers each finish one 30 s chunk, busy for the given seconds."""
    ledger.create_episode(
        episode_id="ep",
        name="ep",
        source="/x.mp3",
        content_hash="h",
        model="small.en",
        options={"compute_type": "int8"},
    )
    for idx in range(len(workers)):
        ledger.add_chunk(
            "ep", ChunkPlan(idx, idx * 30.0, idx * 30 + 30.0, idx * 30.0, idx * 30 + 30.0), "a"
        )
    ledger.finish_chunking("ep", duration=30.0 * len(workers), chunk_count=len(workers))
    ledger.start_run("r1", backend="fly", episode_ids=["ep"])
    clock.advance(1)
    for worker_id, kind, threads, busy in workers:
        claim = ledger.claim(
            ["ep"],
            WorkerInfo(worker_id, kind=kind, threads=threads),
            lease_seconds=60,
            max_attempts=3,
        )
        assert claim.job is not None
        ledger.complete(claim.job.chunk_id, claim.job.lease_token, result='"r"', busy_seconds=busy)
    return "r1"


def test_a_run_measures_speed_per_cpu_by_kind(ledger: Ledger, clock: FakeClock) -> None:
    run = run_with_workers(
        ledger, clock, [("m1", "fly", 2, 10.0), ("m2", "fly", 2, 20.0), ("l", "local", 1, 15.0)]
    )
    measured = {c.kind: c for c in measure_run(ledger, run)}
    cpus = 1 + THREAD_EFFICIENCY
    # Audio-weighted: (30 × 3/cpus + 30 × 1.5/cpus) / 60
    assert measured["fly"].per_cpu == pytest.approx((3 / cpus + 1.5 / cpus) / 2)
    assert measured["fly"].audio_seconds == 60
    assert measured["local"].per_cpu == pytest.approx(2.0)
    assert best(ledger, "small.en", "int8") == measured["fly"], "Fly's own CPUs come first"
    assert best(ledger, "tiny.en", "int8") is None


def test_history_is_averaged_in_with_a_capped_weight(ledger: Ledger) -> None:
    ledger.fold_calibration("m", "int8", "fly", 4.0, 7200)
    row = ledger.fold_calibration("m", "int8", "fly", 10.0, 3600)
    # The 2 h of history weighs as 1 h: (4 × 3600 + 10 × 3600) / 7200
    assert row["per_cpu"] == pytest.approx(7.0)
    assert row["audio_seconds"] == 10_800 and row["runs"] == 2


def test_plans_use_the_measurement_and_say_so(
    ledger: Ledger, clock: FakeClock, tmp_path: Path
) -> None:
    run_with_workers(ledger, clock, [("m1", "fly", 4, 5.0)])
    measure_run(ledger, "r1")
    settings = load_settings(
        model="small.en", fly_app="app", advertise_url="http://x:1", machine_size="performance-4x"
    )
    calibration = best(ledger, "small.en", "int8")
    config = fly_config(settings, calibration=calibration)
    assert calibration is not None
    assert config.limits.speed == pytest.approx(machine_speed("small.en", 4, calibration.per_cpu))
    text = describe_plan(config, estimate(config, 3600), 3600)
    assert "measured on Fly machines" in text and "1 run(s)" in text
    builtin = fly_config(settings)
    assert "built-in estimate for small.en" in describe_plan(builtin, estimate(builtin, 60), 60)
    pooled = estimate(config, 3600, ready=5)
    assert pooled.wall_seconds < estimate(config, 3600).wall_seconds
    assert ", 5 from the warm pool" in describe_plan(config, pooled, 3600, ready=5)
    assert "warm pool" not in text
    forced = fly_config(
        load_settings(model="small.en", fly_app="app", advertise_url="http://x:1", speed=2.5),
        calibration=calibration,
    )
    assert "your speed setting, 2.5×" in forced.speed_source


def test_looking_up_a_calibration_never_creates_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "none" / "ledger.db"
    assert for_settings("small.en", "int8", path) is None
    assert not path.exists()


def test_the_plan_counts_chunks_as_long_as_the_run_cuts_them() -> None:
    """WHISPERFARM_CHUNK_MAX_SECONDS reaches the plan: its last chunk is that long (the
    policy's one-machine rule, tests/test_policy.py, reads the same limit)."""
    base = {"model": "tiny.en", "fly_app": "app", "advertise_url": "http://x:1", "speed": 1.0}
    short, long = (
        fly_config(load_settings(**base, chunk_max_seconds=seconds)) for seconds in (27, 60)
    )
    assert long.limits.longest_chunk == 60
    gap = (60 - 27) / long.limits.speed
    assert estimate(long, 30).wall_seconds == pytest.approx(estimate(short, 30).wall_seconds + gap)
