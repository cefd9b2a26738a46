"""The farm's watch loop (whisperfarm/farm.py): it wakes when the coordinator says a chunk
settled (CoordinatorConfig.settled), not on its next tick."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.support.episodes import make_episode
from whisperfarm.farm import EpisodeStatus, Farm
from whisperfarm.ledger import Ledger
from whisperfarm.ledger.workers import WorkerInfo
from whisperfarm.settings import load_settings
from worker.audio import ChunkFormat

TICK = 60.0  # a tick the test would time out on


class Idle:
    description = "no workers"

    def check(self, ledger: Ledger, work_left: bool) -> None:
        pass


class Silent:
    def update(self, episodes: list[EpisodeStatus]) -> None:
        pass

    def episode_finished(self, episode: EpisodeStatus) -> None:
        pass


def test_the_watch_wakes_when_a_chunk_settles(tmp_path: Path, home: Path) -> None:
    settings = load_settings(model="tiny.en")
    farm = Farm(
        settings,
        Idle(),  # type: ignore[arg-type]
        Silent(),  # type: ignore[arg-type]
        run_id="r1",
        chunk_format=ChunkFormat.WAV,
        fleet_size=1,
        tick=TICK,
    )
    settled = threading.Event()
    with Ledger(settings.ledger_path) as ledger:
        make_episode(ledger, "ep1", [5.0])
        [job] = ledger.claim(["ep1"], WorkerInfo(id="w1"), lease_seconds=120, max_attempts=3).jobs
        result = {"segments": [{"start": 0.0, "end": 1.0, "text": " Hello."}], "model": "tiny.en"}

        def worker_posts() -> None:
            time.sleep(0.5)  # the watch is waiting by now
            with Ledger(settings.ledger_path) as other:
                other.complete(job.chunk_id, job.lease_token, result=json.dumps(result))
            settled.set()  # as the coordinator does on a result

        poster = threading.Thread(target=worker_posts)
        poster.start()
        started = time.monotonic()
        [status] = farm._watch(ledger, {"ep1": ["show"]}, tmp_path / "out", ["txt"], {}, settled)
        took = time.monotonic() - started
        poster.join()
    assert status.state == "done"
    assert (tmp_path / "out" / "show.txt").read_text().strip() == "Hello."
    assert took < TICK / 4, f"the watch slept out its tick ({took:.1f} s)"
