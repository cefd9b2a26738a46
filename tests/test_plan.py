"""Planning a run (whisperfarm/plan.py): the files, the run id, the local workers and their
threads, and the Fly machines, for ``transcribe`` and ``serve``, before anything starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import SAMPLE
from whisperfarm.fly.client import MachinesClient
from whisperfarm.fly.fleet import FlyFleet
from whisperfarm.ledger import Ledger
from whisperfarm.local import LocalFleet
from whisperfarm.plan import fleets, new_run_id, plan_run
from whisperfarm.settings import Settings, load_settings
from whisperfarm.spawn import StandbyWorkers
from worker.audio import ChunkFormat

FLY = {"backend": "fly", "fly_app": "wf-test", "advertise_url": "http://laptop:8765/"}


def test_run_ids_are_eight_fresh_hex_digits_after_a_prefix() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{8}", run_id) for run_id in ids)
    assert re.fullmatch(r"check-[0-9a-f]{8}", new_run_id("check-"))


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 4, 2), (16, 8, 2), (6, 3, 2)],
)
def test_local_workers_default_to_the_cores(cpus: int, workers: int, threads: int) -> None:
    plan = plan_run(load_settings(), [SAMPLE], cpus=cpus)
    assert (plan.workers, plan.threads, plan.fly) == (workers, threads, None)
    assert plan.inputs == [SAMPLE]
    assert plan.model == "small.en" and plan.compute_type == "int8"


def test_asked_for_workers_share_the_cores_and_threads_override() -> None:
    assert _sizes(load_settings(workers=3), cpus=8) == (3, 2)
    assert _sizes(load_settings(workers=0), cpus=8) == (0, 8)
    assert _sizes(load_settings(workers=16), cpus=8) == (16, 1)
    assert _sizes(load_settings(threads=3), cpus=8) == (4, 3)
    assert _sizes(load_settings(workers=2, threads=1), cpus=8) == (2, 1)


def test_a_local_plan_runs_one_local_fleet_with_the_plans_sizes(home: Path) -> None:
    settings = load_settings(workers=3, threads=2, compute_type="float32")
    plan = plan_run(settings, [SAMPLE])
    fleet, fly = fleets(plan)
    assert fly is None
    (local,) = fleet.fleets
    assert isinstance(local, LocalFleet)
    assert (local.workers, local.threads, local.compute_type) == (3, 2, "float32")
    assert local.run_id == plan.run_id and local.logs_dir == home / "logs"
    assert fleet.description == "3 local workers × 2 threads"
    assert plan.chunk_format is ChunkFormat.WAV  # only this machine's workers fetch them
    assert plan.fleet_size == 3  # batched claims are shared among the three
    outside = plan_run(load_settings(workers=0), [SAMPLE])
    assert outside.chunk_format is ChunkFormat.OPUS
    assert outside.fleet_size == 0  # workers from elsewhere: unknown


def test_a_fly_plan_has_no_local_workers_unless_asked_and_estimates_before_any_call() -> None:
    plan = plan_run(load_settings(**FLY), [SAMPLE, SAMPLE], cpus=8)
    assert plan.workers == 0 and plan.fly is not None
    assert plan.fly.audio_seconds == pytest.approx(2 * 245.0, abs=10)
    assert plan.fly.ready == 0
    assert plan.chunk_format is ChunkFormat.OPUS
    assert plan.fly.config.advertise_url == "http://laptop:8765"
    assert not plan.fly.config.with_local_workers
    assert plan.fly.estimate.machines >= 1 and plan.fly.estimate.cost > 0
    # batched claims are shared among the machines the run plans, booted or not
    assert plan.fleet_size == plan.fly.estimate.machines
    assert plan.fly.describe().startswith(f"plan: {plan.fly.audio_seconds / 60:.1f} min of audio")

    client = MachinesClient("wf-test", "token", base_url="http://127.0.0.1:9")
    # Standby workers started for the command line (the config file named Fly): let go
    standby = StandbyWorkers.start(1, 1)
    try:
        fleet, fly = fleets(plan, client, standby=standby)
        assert isinstance(fly, FlyFleet) and fleet.fleets == (fly,)
        assert fly.run_id == plan.run_id
        assert standby.processes == []
    finally:
        client.close()
        standby.close()

    with_local = plan_run(load_settings(**FLY, workers=2), [SAMPLE], cpus=8)
    assert (with_local.workers, with_local.threads) == (2, 4)
    assert with_local.fly is not None and with_local.fly.config.with_local_workers
    assert with_local.chunk_format is ChunkFormat.OPUS  # some chunks go to Fly
    assert with_local.fleet_size == 2 + with_local.fly.estimate.machines
    with pytest.raises(ValueError, match="client"):
        fleets(with_local)


def test_serve_plans_the_given_files_and_with_queue_the_models_unfinished_episodes(
    tmp_path: Path, home: Path
) -> None:
    queued = _audio(tmp_path / "queued.mp3")
    other_model = _audio(tmp_path / "other.mp3")
    finished = _audio(tmp_path / "finished.mp3")
    gone = tmp_path / "gone.mp3"
    settings = load_settings(model="tiny.en", compute_type="float32", threads=4)
    with Ledger(settings.ledger_path) as ledger:
        for path, model, state in [
            (queued, "tiny.en", "queued"),
            (other_model, "small.en", "queued"),
            (finished, "tiny.en", "done"),
            (gone, "tiny.en", "queued"),
        ]:
            ledger.create_episode(
                episode_id=path.stem,
                name=path.stem,
                source=str(path),
                content_hash=path.stem,
                model=model,
                options={},
            )
            ledger.update_episode(path.stem, state=state)

    plan = plan_run(settings, [SAMPLE, queued], serving=True, workers=2)
    assert plan.inputs == [SAMPLE, queued]
    assert (plan.workers, plan.threads, plan.compute_type, plan.fly) == (2, 1, "float32", None)
    assert plan.chunk_format is ChunkFormat.OPUS  # serve is for workers from elsewhere
    assert plan.fleet_size == 2  # the local ones; outside workers come and go
    (local,) = fleets(plan)[0].fleets
    assert isinstance(local, LocalFleet) and (local.workers, local.threads) == (2, 1)

    assert plan_run(settings, [], serving=True, queue=True).inputs == [queued]
    assert plan_run(settings, [SAMPLE], serving=True, queue=True).queued == [queued]
    assert plan_run(settings, [SAMPLE, queued], serving=True, queue=True).queued == []
    assert plan_run(load_settings(model="base.en"), [], serving=True, queue=True).inputs == []
    # Without --queue, serve serves what it is given, and none of the ledger's others.
    assert plan_run(settings, [SAMPLE], serving=True).inputs == [SAMPLE]
    assert plan_run(settings, [], serving=True).inputs == []


def _sizes(settings: Settings, *, cpus: int) -> tuple[int, int]:
    plan = plan_run(settings, [SAMPLE], cpus=cpus)
    return plan.workers, plan.threads


def _audio(path: Path) -> Path:
    path.write_bytes(SAMPLE.read_bytes())
    return path
