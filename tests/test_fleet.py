"""FlyFleet's controller, one ``tick()`` at a time, against the fake Machines API in-process.

No thread, no sleeping: the ledger, the fake and the fleet share one FakeClock that the
tests move by hand. The fake starts no processes, so machines stay up until a test crashes
or destroys them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.fakefly import FakeFly, Faults, create_app
from tests.support.clock import FakeClock
from tests.support.in_process import BASE_URL, InProcessTransport
from whisperfarm.costs import cost_report
from whisperfarm.errors import (
    BudgetReached,
    FlyAuthError,
    FlyError,
    FlyGPUUnsupported,
    FlyUnavailable,
    MachinesCantReach,
    UsageError,
)
from whisperfarm.fly.client import MachinesClient, build_worker_config
from whisperfarm.fly.config import FlyConfig, describe_plan, estimate, fly_client, fly_config
from whisperfarm.fly.fleet import CREATE_BACKOFF_SECONDS, FlyFleet
from whisperfarm.fly.policy import FleetLimits
from whisperfarm.fly.pool import POOL_KEY, warm
from whisperfarm.fly.pricing import SIZES, Size
from whisperfarm.fly.reach import ReachLimits
from whisperfarm.fly.reap import reap
from whisperfarm.fly.store import MachineRecord, MachineStore
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from whisperfarm.settings import Settings

APP = "wf-test"
TOKEN = "fake-token"
RUN = "run1"
EPISODE = "ep1"
PRICE = 0.01  # dollars a second: round numbers in the budget tests
SIZE = Size("performance-2x", 2, 4096, PRICE)
CHUNK = 25.0


class LossyHttp(httpx.Client):
    """The fake in-process, with answers that can go missing: a request named in
    ``lose_answers`` (by method, in order) takes effect on the fake, then times out."""

    def __init__(self, app: Any):
        super().__init__(transport=InProcessTransport(TestClient(app)), base_url=BASE_URL)
        self.lose_answers: list[str] = []

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = super().send(request, **kwargs)
        if self.lose_answers and self.lose_answers[0] == request.method:
            self.lose_answers.pop(0)
            response.close()
            raise httpx.ReadTimeout("timed out waiting for Fly's answer", request=request)
        return response


@dataclass
class Rig:
    clock: FakeClock
    ledger: Ledger
    fly: FakeFly
    http: LossyHttp
    client: MachinesClient
    fleet: FlyFleet

    def rows(self) -> list[MachineRecord]:
        return MachineStore(self.ledger).machines(RUN)

    def fake_machines(self) -> list[dict[str, Any]]:
        return self.fly.snapshot()["machines"]

    def alive_on_fly(self) -> list[str]:
        return [m["id"] for m in self.fake_machines() if m["state"] != "destroyed"]

    def creates(self) -> int:
        return self.fly.requests["create"]

    def warm(self, count: int, **kwargs: Any) -> list[str]:
        """Make ``count`` pool machines fit for the rig's runs, as `machines warm` does."""
        self.clock.advance(3.0)  # Fly's create burst is back
        defaults: dict[str, Any] = {
            "image": f"registry.fly.io/{APP}:v1", "size": SIZE, "model": "tiny.en"
        }  # fmt: skip
        kwargs = defaults | kwargs
        report = warm(
            self.client,
            self.ledger,
            count,
            rootfs_gb=2.0,
            clock=self.clock,
            sleep=self.clock.advance,
            **kwargs,
        )
        self.clock.advance(10.0)  # their images unpacked
        return report.created

    def pool_rows(self) -> list[MachineRecord]:
        return [row for row in self.rows() if row["pool"]]

    def on_fly(self) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.fake_machines()}

    def reaches(self, machine_id: str) -> None:
        """The machine's worker reaches the coordinator: its first claim, as the worker
        API records it (a created machine's worker is named by its machine id, a pool
        machine's by its id and the run)."""
        row = next(row for row in self.rows() if row["id"] == machine_id)
        worker_id = f"{machine_id}-{RUN}" if row["pool"] else machine_id
        worker = WorkerInfo(worker_id, kind="fly", machine_id=machine_id)
        self.ledger.claim([], worker, lease_seconds=60, max_attempts=3)

    def tick_every(self, seconds: float, times: int) -> None:
        for _ in range(times):
            self.clock.advance(seconds)
            self.fleet.tick(self.ledger)


def queue_episode(ledger: Ledger, episode_id: str = EPISODE, chunks: int = 200) -> None:
    ledger.create_episode(
        episode_id=episode_id,
        name=f"show-{episode_id}",
        source=f"/audio/{episode_id}.mp3",
        content_hash=f"hash-{episode_id}",
        model="tiny.en",
        options={},
    )
    for idx in range(chunks):
        start = idx * CHUNK
        plan = ChunkPlan(idx, start, start + CHUNK, start, start + CHUNK)
        ledger.add_chunk(episode_id, plan, f"/chunks/{episode_id}/{idx}.wav")
    ledger.finish_chunking(episode_id, duration=chunks * CHUNK, chunk_count=chunks)


def fly_settings(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("home", tmp_path / "home")
    values.setdefault("model", "tiny.en")
    return Settings(**values)


pytestmark = pytest.mark.usefixtures("no_fly_env")


@pytest.fixture
def make_rig(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Rig]]:
    opened: list[Rig] = []

    def make(
        *,
        max_machines: int = 3,
        budget: float | None = None,
        chunks: int = 200,
        faults: Faults | None = None,
        start_latency: float = 45.0,
        stop_margin: float = 30.0,
        start_timeout: float = 120.0,
        give_up_seconds: float = 60.0,
        attempts: int = 1,
        with_local_workers: bool = False,
        update_launches: bool = False,
        reach: ReachLimits | None = None,
    ) -> Rig:
        app = create_app(
            app=APP,
            token=TOKEN,
            clock=clock,
            sleep=clock.sleep,
            tick_interval=None,
            start_latency=5.0,
            warm_start_latency=2.0,
            update_launches=update_launches,
            faults=faults,
        )
        http = LossyHttp(app)
        # One attempt per call unless asked: the fleet's own backoff is what most tests
        # look at. The client's retry sleeps move the shared clock.
        client = MachinesClient(
            APP,
            TOKEN,
            base_url="http://testserver",
            http=http,
            sleep=clock.advance,
            clock=clock,
            max_attempts=attempts,
        )
        ledger = Ledger(tmp_path / "home" / "ledger.db", clock=clock)
        queue_episode(ledger, chunks=chunks)
        ledger.start_run(RUN, backend="fly", episode_ids=[EPISODE], pid=os.getpid())
        limits = FleetLimits(
            max_machines=max_machines,
            budget=budget,
            price_per_second=PRICE,
            speed=1.0,
            start_latency=start_latency,
            stop_margin=stop_margin,
        )
        config = FlyConfig(
            app=APP,
            image=f"registry.fly.io/{APP}:v1",
            size=SIZE,
            model="tiny.en",
            advertise_url="http://laptop._peer.internal:8765",
            limits=limits,
            poll_seconds=2.0,
            start_timeout=start_timeout,
            give_up_seconds=give_up_seconds,
            with_local_workers=with_local_workers,
            pool_parallel=1,  # the in-process fake is not thread-safe
            reach=reach,
        )
        fleet = FlyFleet(
            client,
            config,
            ledger_path=tmp_path / "home" / "ledger.db",
            run_id=RUN,
            clock=clock,
            sleep=clock.advance,
        )
        rig = Rig(clock, ledger, app.state.fly, http, client, fleet)
        opened.append(rig)
        return rig

    yield make
    for rig in opened:
        rig.ledger.close()
        rig.http.close()


# -- scaling -----------------------------------------------------------------------------------


def test_scales_up_to_max_machines_and_no_further(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=5)
    rig.fleet.tick(rig.ledger)
    assert len(rig.rows()) == 3  # the create burst
    rig.tick_every(2.0, 10)
    assert len(rig.rows()) == 5
    assert len(rig.alive_on_fly()) == 5
    assert rig.creates() == 5
    assert rig.fly.snapshot()["max_concurrent_active"] == 5
    names = [row["name"] for row in rig.rows()]
    assert len(set(names)) == 5 and all(name.startswith(f"wf-{RUN}-") for name in names)
    config = rig.fake_machines()[0]["config"]
    assert config["metadata"]["whisperfarm_run"] == RUN
    assert config["env"]["WHISPERFARM_MODEL"] == "tiny.en"


def test_creates_are_paced_to_three_at_once_then_one_a_second(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=20)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 3
    rig.fleet.tick(rig.ledger)  # no time passed: no token left
    assert rig.creates() == 3
    rig.clock.advance(1.0)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 4
    rig.clock.advance(0.5)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 4
    rig.clock.advance(0.5)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 5
    rig.clock.advance(60.0)  # a long pause refills the burst, not sixty creates
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 8
    assert rig.fly.requests["rate_limited"] == 0
    assert len(rig.alive_on_fly()) == len(rig.rows()) == 8


def test_a_machine_gone_from_the_list_is_recorded_destroyed_and_replaced(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)  # both started
    first, second = (row["id"] for row in rig.rows())
    assert rig.http.post(f"/_fake/machines/{first}/crash").json() == {"ok": True}
    assert first not in rig.alive_on_fly()  # exited, so Fly auto-destroyed it
    rig.clock.advance(1.0)
    rig.fleet.tick(rig.ledger)
    rows = {row["id"]: row for row in rig.rows()}
    assert rows[first]["state"] == "destroyed"
    assert rows[first]["destroyed_at"] == rig.clock.now
    assert rows[second]["state"] == "started"
    assert len(rows) == 3  # a replacement for the lost one, still two at a time
    assert len(rig.alive_on_fly()) == 2
    # Its bill stopped when it was seen gone.
    cost_then = {r["id"]: r for r in rig.rows()}[first]
    rig.clock.advance(100.0)
    rig.fleet.tick(rig.ledger)
    assert {r["id"]: r for r in rig.rows()}[first]["destroyed_at"] == cost_then["destroyed_at"]


def test_a_machine_stuck_starting_is_destroyed_after_start_timeout(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, start_timeout=120.0, faults=Faults(never_start=1))
    rig.fleet.tick(rig.ledger)
    (stuck,) = rig.rows()
    rig.tick_every(30.0, 4)  # 120 s: not yet past the timeout
    assert MachineStore(rig.ledger).machines(RUN)[0]["state"] == "starting"
    assert rig.alive_on_fly() == [stuck["id"]]
    rig.tick_every(30.0, 1)
    rows = {row["id"]: row for row in rig.rows()}
    assert rows[stuck["id"]]["state"] == "destroyed"
    assert "stuck starting" in (rows[stuck["id"]]["error"] or "")
    assert len(rows) == 2  # replaced in the same tick
    (replacement,) = rig.alive_on_fly()
    assert replacement != stuck["id"]
    assert rig.fly.snapshot()["max_concurrent_active"] == 1


# -- capacity and outages -----------------------------------------------------------------------


def test_capacity_errors_back_off_before_the_next_create(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=1, faults=Faults(capacity_409=1))
    rig.fleet.tick(rig.ledger)  # raises nothing: capacity is not fatal
    assert rig.creates() == 1 and rig.rows() == []
    rig.tick_every(2.0, 7)  # 14 s: still backing off
    assert rig.creates() == 1
    rig.clock.advance(CREATE_BACKOFF_SECONDS - 14.0 + 0.5)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 2
    assert len(rig.rows()) == 1 and len(rig.alive_on_fly()) == 1


def test_no_machine_for_give_up_seconds_fails_with_fly_unavailable(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(give_up_seconds=60.0, faults=Faults(capacity_412=1000))
    rig.fleet.tick(rig.ledger)
    rig.tick_every(16.0, 3)  # 48 s without a machine: keep trying
    assert rig.creates() == 4
    rig.clock.advance(16.0)
    with pytest.raises(FlyUnavailable, match="no Fly machine could be started for 60s"):
        rig.fleet.tick(rig.ledger)
    assert rig.fake_machines() == []


def test_capacity_errors_never_fail_a_run_that_has_a_machine(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2, give_up_seconds=60.0)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    first = rig.rows()[0]["id"]
    rig.http.post(f"/_fake/machines/{first}/crash")
    rig.fly.faults.capacity_409 = 1000
    rig.tick_every(16.0, 10)  # 160 s of failed creates with one machine working
    assert len(rig.alive_on_fly()) == 1
    assert rig.creates() > 3  # it kept asking, at the backoff's pace
    assert rig.creates() <= 2 + 10


def test_a_create_retried_after_a_timeout_makes_one_machine_billed_from_the_ask(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, attempts=3)
    asked_at = rig.clock.now
    rig.http.lose_answers = ["POST"]  # made, but the answer timed out
    rig.fleet.tick(rig.ledger)
    assert rig.clock.now > asked_at  # the client waited before looking again
    (row,) = rig.rows()
    assert rig.alive_on_fly() == [row["id"]]
    assert rig.creates() == 1  # found by its name, not created again
    assert row["created_at"] == asked_at


def test_a_create_whose_answer_was_lost_is_adopted_not_made_twice(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)
    asked_at = rig.clock.now
    # The create makes the machine but its answer times out, and so does the listing the
    # client tries to find it with.
    rig.http.lose_answers = ["POST", "GET"]
    rig.fleet.tick(rig.ledger)
    assert rig.rows() == []
    assert len(rig.alive_on_fly()) == 1
    rig.clock.advance(2.0)
    rig.fleet.tick(rig.ledger)
    (row,) = rig.rows()
    assert row["id"] == rig.alive_on_fly()[0]
    assert row["name"] == f"wf-{RUN}-001"
    assert row["created_at"] == asked_at  # billed from when it was asked for
    rig.tick_every(5.0, 6)  # well past the backoff
    assert len(rig.fake_machines()) == 1
    rig.fleet.stop()
    assert rig.alive_on_fly() == []


def test_stop_destroys_a_machine_the_ledger_missed(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=1)
    rig.http.lose_answers = ["POST", "GET"]
    rig.fleet.tick(rig.ledger)
    assert rig.rows() == [] and len(rig.alive_on_fly()) == 1
    rig.fleet.stop()
    assert rig.alive_on_fly() == []
    assert [row["state"] for row in rig.rows()] == ["destroyed"]
    assert rig.fleet.leftovers == []


# -- the budget --------------------------------------------------------------------------------


def test_at_the_budget_every_machine_is_destroyed_and_the_user_told_what_finishing_costs(
    make_rig: Callable[..., Rig],
) -> None:
    budget = 1.0
    rig = make_rig(max_machines=2, budget=budget, start_latency=10.0, stop_margin=10.0)
    rig.fleet.tick(rig.ledger)
    assert len(rig.rows()) == 1  # the budget pays for part of the work on one machine
    with pytest.raises(BudgetReached) as caught:
        for _ in range(200):
            rig.clock.advance(2.0)
            rig.fleet.tick(rig.ledger)
    spent = MachineStore(rig.ledger).spend(RUN)
    assert 0.8 < spent <= budget  # close to the cap, never over it
    assert rig.alive_on_fly() == []
    assert all(row["state"] == "destroyed" and row["destroyed_at"] for row in rig.rows())
    assert len(rig.fake_machines()) == 1
    message = str(caught.value)
    assert "budget $1.00 reached" in message
    assert f"(${spent:.2f} spent)" in message
    assert "0 of 200 chunks done" in message
    assert "83.3 min of audio left" in message
    # One machine doing what is left: start, 5000 s of audio at 1x, stop; at $0.01/s.
    assert "Finishing costs about $50.20 more" in message
    assert "larger --budget" in message
    # Nothing else spends after the stop.
    rig.clock.advance(100.0)
    assert MachineStore(rig.ledger).spend(RUN) == spent


def test_a_budget_too_small_for_one_machine_stops_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(budget=0.1, start_latency=10.0, stop_margin=10.0)
    with pytest.raises(BudgetReached, match=r"budget \$0\.10 reached \(\$0\.00 spent\)"):
        rig.fleet.tick(rig.ledger)
    assert rig.creates() == 0


def test_a_budget_too_small_for_a_machine_leaves_the_work_to_a_local_worker(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(budget=0.1, start_latency=10.0, stop_margin=10.0, give_up_seconds=60.0)
    laptop = WorkerInfo("laptop", kind="local")

    def laptop_claims() -> None:
        rig.ledger.claim([EPISODE], laptop, lease_seconds=60, max_attempts=3)

    laptop_claims()
    rig.fleet.tick(rig.ledger)
    for _ in range(10):  # 100 s, past give_up_seconds, with the laptop working
        rig.clock.advance(10.0)
        laptop_claims()
        rig.fleet.tick(rig.ledger)
    assert rig.creates() == 0
    rig.clock.advance(31.0)  # the laptop went quiet: nothing can do the work now
    with pytest.raises(BudgetReached, match="larger --budget"):
        rig.fleet.tick(rig.ledger)


def test_with_local_workers_the_cap_stops_machines_but_not_the_run(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(
        max_machines=2, budget=1.0, start_latency=10.0, stop_margin=10.0, with_local_workers=True
    )
    rig.fleet.tick(rig.ledger)
    assert len(rig.rows()) == 1
    for _ in range(200):  # well past the cap: no BudgetReached, since local workers go on
        rig.clock.advance(2.0)
        rig.fleet.tick(rig.ledger)
    assert MachineStore(rig.ledger).spend(RUN) <= 1.0
    assert rig.alive_on_fly() == []
    assert len(rig.fake_machines()) == 1, "no machine started after the cap"


def test_with_local_workers_a_tiny_budget_just_means_no_machines(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(budget=0.1, start_latency=10.0, stop_margin=10.0, with_local_workers=True)
    for _ in range(5):
        rig.fleet.tick(rig.ledger)
        rig.clock.advance(40.0)
    assert rig.creates() == 0


# -- reachability first, then scale ------------------------------------------------------------

REACH = ReachLimits(timeout=90.0, limit=3, give_up=50.0)


def test_one_machine_runs_until_its_worker_reaches_the_coordinator_then_the_fleet_scales(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=5, reach=REACH)
    rig.fleet.tick(rig.ledger)
    (probe,) = rig.rows()
    rig.tick_every(2.0, 20)  # started at 5 s, its worker loading: still one machine
    assert rig.creates() == 1 and rig.alive_on_fly() == [probe["id"]]
    rig.reaches(probe["id"])
    rig.clock.advance(2.0)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 4  # the create burst, at once
    rig.tick_every(2.0, 2)
    assert rig.creates() == 5 and len(rig.alive_on_fly()) == 5


def test_a_first_machine_whose_worker_never_reaches_the_coordinator_ends_the_run(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=3, reach=REACH)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)  # started
    rig.fleet.tick(rig.ledger)
    rig.tick_every(8.0, 11)  # 88 s running, no worker: wait, and make no other machine
    assert rig.creates() == 1
    rig.clock.advance(3.0)
    with pytest.raises(MachinesCantReach) as failed:
        rig.fleet.tick(rig.ledger)
    message = str(failed.value)
    assert "first Fly machine never reached this coordinator" in message
    assert "http://laptop._peer.internal:8765" in message  # the advertised URL
    assert "--host ::" in message and "WireGuard" in message and "tunnel" in message
    assert "whisperfarm machines check" in message
    assert rig.alive_on_fly() == [] and rig.creates() == 1
    (row,) = rig.rows()
    assert row["state"] == "destroyed" and "never reached the coordinator" in (row["error"] or "")


def test_a_first_machine_whose_worker_gave_up_on_the_coordinator_ends_the_run_at_once(
    make_rig: Callable[..., Rig],
) -> None:
    """The worker gave up on the coordinator before the reach timeout (its give-up, 50 s
    here, is shorter); it exited and Fly destroyed its machine."""
    rig = make_rig(max_machines=3, reach=REACH)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    rig.fleet.tick(rig.ledger)  # seen running
    rig.clock.advance(51.0)
    rig.http.post(f"/_fake/machines/{rig.rows()[0]['id']}/crash")
    with pytest.raises(MachinesCantReach):
        rig.fleet.tick(rig.ledger)
    assert rig.creates() == 1


def test_a_first_machine_that_crashes_at_boot_is_replaced_and_the_run_goes_on(
    make_rig: Callable[..., Rig],
) -> None:
    """Dead two seconds after it started (out of memory, a sick host): that says nothing
    about the network, so the fleet tries another machine, still one at a time."""
    rig = make_rig(max_machines=3, reach=REACH)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(2.0)
    (first,) = rig.alive_on_fly()
    rig.http.post(f"/_fake/machines/{first}/crash")
    rig.fleet.tick(rig.ledger)
    (second,) = rig.alive_on_fly()
    assert second != first and rig.creates() == 2
    rig.clock.advance(6.0)
    rig.reaches(second)
    rig.fleet.tick(rig.ledger)
    assert len(rig.alive_on_fly()) == 3


def test_first_machines_crashing_at_boot_three_times_in_a_row_end_the_run(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=3, reach=REACH)
    with pytest.raises(MachinesCantReach):
        for _ in range(3):
            rig.fleet.tick(rig.ledger)
            rig.clock.advance(6.0)
            rig.fleet.tick(rig.ledger)  # seen running
            rig.clock.advance(2.0)
            for machine_id in rig.alive_on_fly():
                rig.http.post(f"/_fake/machines/{machine_id}/crash")
            rig.clock.advance(2.0)
            rig.fleet.tick(rig.ledger)
    assert rig.creates() == 3 and rig.fly.snapshot()["max_concurrent_active"] == 1


def test_after_a_worker_reached_us_k_unreached_machines_in_a_row_end_the_run_one_at_a_time(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=3, reach=REACH)
    rig.fleet.tick(rig.ledger)
    (first,) = rig.rows()
    rig.clock.advance(6.0)
    rig.reaches(first["id"])
    rig.fleet.tick(rig.ledger)
    assert len(rig.alive_on_fly()) == 3
    # Now the network breaks: the first machine exits, the two others never reach us.
    rig.http.post(f"/_fake/machines/{first['id']}/crash")
    rig.tick_every(2.0, 3)  # the first is replaced (a machine that reached ends: no count)
    assert rig.creates() == 4 and len(rig.alive_on_fly()) == 3
    rig.tick_every(10.0, 9)  # 90 s: the two others are unreached, and destroyed
    unreached = [row for row in rig.rows() if "never reached" in (row["error"] or "")]
    assert len(unreached) == 2
    # Probing again: one unproven machine at a time, never three.
    assert len(rig.alive_on_fly()) == 1
    creates = rig.creates()
    with pytest.raises(MachinesCantReach, match="3 Fly machines in a row never reached"):
        rig.tick_every(10.0, 12)
    assert rig.creates() == creates
    assert rig.fly.snapshot()["max_concurrent_active"] == 3


def test_a_worker_that_reaches_us_resets_the_count_and_the_fleet_scales_again(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2, reach=REACH)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    rig.reaches(rig.rows()[0]["id"])
    rig.fleet.tick(rig.ledger)
    second = rig.rows()[1]["id"]
    rig.tick_every(10.0, 10)  # the second never reaches us: destroyed, one in a row
    assert rig.on_fly()[second] == "destroyed"
    (replacement,) = [m for m in rig.alive_on_fly() if m != rig.rows()[0]["id"]]
    rig.reaches(replacement)
    rig.tick_every(10.0, 30)  # 300 s more: nothing is unreached, nothing ends
    assert len(rig.alive_on_fly()) == 2 and rig.creates() == 3


def test_machines_that_never_ran_say_nothing_about_reachability(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, start_timeout=120.0, faults=Faults(never_start=3), reach=REACH)
    rig.tick_every(30.0, 16)  # three stuck machines destroyed one after another
    stuck = [row for row in rig.rows() if "stuck starting" in (row["error"] or "")]
    assert len(stuck) == 3  # and no MachinesCantReach


def test_with_local_workers_unreachable_machines_end_but_the_run_goes_on(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2, reach=REACH, with_local_workers=True)
    rig.fleet.tick(rig.ledger)
    rig.tick_every(10.0, 30)  # no MachinesCantReach: the local workers carry on
    assert rig.creates() == 1 and rig.alive_on_fly() == []


def test_the_warm_pool_starts_one_machine_until_its_worker_reaches_the_coordinator(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=4, reach=REACH)
    pool = rig.warm(4)
    rig.fleet.tick(rig.ledger)
    rig.tick_every(2.0, 5)
    assert rig.fly.requests["start"] == 1 and len(rig.pool_rows()) == 1
    assert sorted(rig.on_fly().values()).count("started") == 1
    rig.reaches(rig.pool_rows()[0]["id"])
    rig.fleet.tick(rig.ledger)
    assert rig.fly.requests["start"] == 4 and rig.creates() == 4  # the warm-up's only
    rig.clock.advance(2.0)
    assert {rig.on_fly()[machine_id] for machine_id in pool} == {"started"}


def test_an_unreached_pool_machine_is_stopped_not_destroyed(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=2, reach=REACH)
    (machine_id,) = rig.warm(1)
    rig.fleet.tick(rig.ledger)
    rig.tick_every(10.0, 9)
    with pytest.raises(MachinesCantReach):
        rig.tick_every(10.0, 2)
    rig.clock.advance(1.0)
    assert rig.on_fly()[machine_id] == "stopped"  # back in the pool


def test_fly_config_probes_first_with_the_reach_settings(tmp_path: Path) -> None:
    base = {"fly_app": APP, "advertise_url": "http://10.0.0.5:8765"}
    # A worker gives up after 60 s; the fleet sees it a poll (2 s) late at most.
    assert fly_config(fly_settings(tmp_path, **base)).reach == ReachLimits(90.0, 3, 58.0)
    tuned = fly_settings(
        tmp_path, **base, fly_reach_timeout=30, fly_unreached_limit=5,
        fly_worker_give_up_seconds=20,
    )  # fmt: skip
    config = fly_config(tuned)
    assert config.reach == ReachLimits(30.0, 5, 18.0)
    # The plan waits for the probe: one machine, then the others a start latency later.
    probed = estimate(config, 3600)
    unprobed = estimate(replace(config, reach=None), 3600)
    assert probed.machines == unprobed.machines == 10
    assert probed.wall_seconds - unprobed.wall_seconds > config.limits.start_latency / 2
    text = describe_plan(config, probed, 3600)
    assert "one machine first, the others once its worker reaches http://10.0.0.5:8765" in text
    assert "(within 30s, else the run stops)" in text


# -- stop and leftovers -------------------------------------------------------------------------


def test_stop_destroys_every_machine_and_records_when(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=3)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(30.0)
    assert len(rig.alive_on_fly()) == 3
    rig.fleet.stop()
    assert rig.alive_on_fly() == []
    rows = rig.rows()
    assert len(rows) == 3
    assert all(row["state"] == "destroyed" for row in rows)
    assert all(row["destroyed_at"] == rig.clock.now for row in rows)
    assert rig.fleet.leftovers == []
    assert MachineStore(rig.ledger).spend(RUN) == pytest.approx(3 * 30.0 * PRICE)


def test_machines_whose_destroy_failed_are_leftovers(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=2)
    rig.fleet.tick(rig.ledger)
    ids = sorted(row["id"] for row in rig.rows())
    rig.fly.faults.server_errors = 100  # every request answers 503
    rig.fleet.stop()
    assert sorted(rig.fleet.leftovers) == ids
    assert sorted(rig.alive_on_fly()) == ids
    assert all(row["state"] != "destroyed" for row in rig.rows())
    rig.fly.faults.server_errors = 0
    rig.fleet.stop()  # a second try once Fly answers again
    assert rig.fleet.leftovers == []
    assert rig.alive_on_fly() == []


# -- reap --------------------------------------------------------------------------------------


def test_reap_destroys_machines_of_ended_runs_and_keeps_live_ones(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    ledger, client = rig.ledger, rig.client
    ledger.start_run("dead", backend="fly", episode_ids=[EPISODE], pid=None)
    ledger.end_run("dead", "crashed")

    def machine(run_id: str, name: str, *, in_ledger: bool = True) -> str:
        config = build_worker_config(
            image="registry.fly.io/wf-test:v1",
            size="performance-1x",
            env={},
            run_id=run_id,
            machine_name=name,
            model="tiny.en",
        )
        made = client.create(config, name=name)
        if in_ledger:
            record(run_id, made.id, name)
        return made.id

    def record(run_id: str, machine_id: str, name: str, app: str = APP) -> None:
        MachineStore(ledger).record_machine(
            machine_id=machine_id,
            run_id=run_id,
            name=name,
            app=app,
            region="ord",
            size="performance-1x",
            cpus=1,
            memory_mb=2048,
            usd_per_second=SIZES["performance-1x"].usd_per_second,
            state="started",
        )

    live = machine(RUN, "wf-live-001")
    dead = machine("dead", "wf-dead-001")
    rig.clock.advance(1.0)  # the create rate limit
    stray = machine("lost", "wf-lost-001", in_ledger=False)  # a run the ledger never saw
    record("dead", "gone-1", "wf-dead-002")  # ended on Fly while no one watched
    record("dead", "other-1", "wf-other-001", app="another-app")  # not this app's

    result = reap(client, ledger)
    assert sorted(result.destroyed) == sorted([dead, stray])
    assert result.kept == [live]
    assert result.failed == []
    assert rig.alive_on_fly() == [live]
    states = {row["id"]: (row["state"], row["error"]) for row in MachineStore(ledger).machines()}
    assert states[dead] == ("destroyed", "reaped")
    assert states["gone-1"] == ("destroyed", "gone when reaped")
    assert states["other-1"] == ("started", None)  # another app's listing can't tell
    assert states[live][0] == "started"

    everything = reap(client, ledger, everything=True)
    assert everything.destroyed == [live] and everything.kept == []
    assert rig.alive_on_fly() == []
    assert {row["id"]: row["state"] for row in MachineStore(ledger).machines()}[live] == "destroyed"


def test_reap_looks_up_what_a_lagging_list_leaves_out_and_destroys_it(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(faults=Faults(list_lag=30.0))
    ledger = rig.ledger
    ledger.start_run("dead", backend="fly", episode_ids=[EPISODE], pid=None)
    ledger.end_run("dead", "crashed")
    made = []
    for name in ("wf-dead-001", "wf-dead-002"):
        config = build_worker_config(
            image="registry.fly.io/wf-test:v1",
            size="performance-1x",
            env={},
            run_id="dead",
            machine_name=name,
            model="tiny.en",
        )
        machine = rig.client.create(config, name=name)
        MachineStore(ledger).record_machine(
            machine_id=machine.id,
            run_id="dead",
            name=name,
            app=APP,
            region="ord",
            size="performance-1x",
            cpus=1,
            memory_mb=2048,
            usd_per_second=SIZES["performance-1x"].usd_per_second,
            state="started",
        )
        made.append(machine.id)
    rig.fly.set_host(made[1], "unreachable", "null")  # its metadata can't be seen either
    result = reap(rig.client, ledger)  # the list shows none of them yet
    assert sorted(result.destroyed) == sorted(made)
    assert rig.alive_on_fly() == []
    states = {row["id"]: (row["state"], row["error"]) for row in MachineStore(ledger).machines()}
    assert {states[m] for m in made} == {("destroyed", "reaped")}


# -- configuration -----------------------------------------------------------------------------


def test_fly_config_needs_an_app(tmp_path: Path) -> None:
    settings = fly_settings(tmp_path, advertise_url="http://laptop:8765")
    with pytest.raises(UsageError, match="FLY_APP"):
        fly_config(settings)


def test_fly_config_needs_an_advertise_url(tmp_path: Path) -> None:
    settings = fly_settings(tmp_path, fly_app=APP)
    with pytest.raises(UsageError, match="--advertise-url"):
        fly_config(settings)


def test_fly_config_refuses_gpu_sizes_naming_the_alternative(tmp_path: Path) -> None:
    settings = fly_settings(
        tmp_path, fly_app=APP, advertise_url="http://laptop:8765", machine_size="a100-40gb"
    )
    with pytest.raises(FlyGPUUnsupported, match="performance"):
        fly_config(settings)


def test_fly_config_refuses_unknown_sizes(tmp_path: Path) -> None:
    settings = fly_settings(
        tmp_path, fly_app=APP, advertise_url="http://laptop:8765", machine_size="performance-3x"
    )
    with pytest.raises(UsageError, match="Unknown Fly machine size 'performance-3x'"):
        fly_config(settings)


def test_fly_config_from_settings(tmp_path: Path) -> None:
    settings = fly_settings(
        tmp_path,
        fly_app=APP,
        advertise_url="http://laptop._peer.internal:8765/",
        region="ams",
        budget=2.5,
        max_machines=4,
        prices={"performance-2x": 0.00003},
    )
    config = fly_config(settings)
    assert config.size.name == "performance-2x"  # the default for tiny.en
    assert config.size.usd_per_second == 0.00003
    assert config.image == f"registry.fly.io/{APP}:latest"
    assert config.advertise_url == "http://laptop._peer.internal:8765"
    assert (config.limits.max_machines, config.limits.budget) == (4, 2.5)
    assert config.limits.price_per_second == 0.00003
    assert config.region == "ams"


def test_fly_client_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(FlyAuthError, match=f"fly tokens create deploy -a {APP}"):
        fly_client(fly_settings(tmp_path, fly_app=APP))
    with pytest.raises(FlyAuthError, match="FLY_API_TOKEN"):
        fly_client(fly_settings(tmp_path, fly_app=APP, fly_api_token="   "))
    client = fly_client(fly_settings(tmp_path, fly_app=APP, fly_api_token="FlyV1 fm2_abc"))
    client.close()


# -- what runs cost ----------------------------------------------------------------------------


def test_cost_report_splits_a_run_over_its_episodes_by_audio(
    tmp_path: Path, clock: FakeClock
) -> None:
    ledger = Ledger(tmp_path / "ledger.db", clock=clock)
    queue_episode(ledger, "long", chunks=12)  # 300 s
    queue_episode(ledger, "short", chunks=4)  # 100 s
    ledger.start_run("r1", backend="fly", episode_ids=["long", "short"], budget=5.0)
    clock.advance(60.0)
    ledger.start_run("r2", backend="local", episode_ids=["short"])
    for machine_id, seconds in (("m1", 100.0), ("m2", 50.0)):
        MachineStore(ledger).record_machine(
            machine_id=machine_id,
            run_id="r1",
            name=f"wf-r1-{machine_id}",
            app=APP,
            region="ord",
            size=SIZE.name,
            cpus=2,
            memory_mb=4096,
            usd_per_second=PRICE,
            state="created",
        )
        clock.advance(seconds)
        MachineStore(ledger).update_machine(machine_id, state="destroyed")
    first, second = cost_report(ledger)
    ledger.close()
    assert first.run_id == "r1" and first.machines == 2
    assert first.machine_seconds == pytest.approx(150.0)
    assert first.spent == pytest.approx(1.5)
    assert first.budget == 5.0
    assert first.episodes == {
        "show-long": pytest.approx(1.125),
        "show-short": pytest.approx(0.375),
    }
    assert second.run_id == "r2" and second.spent == 0 and second.machines == 0
    assert second.episodes == {"show-short": 0}


# -- the warm pool -----------------------------------------------------------------------------


def test_pool_machines_start_first_then_creates_make_up_the_rest(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=5)
    pool = rig.warm(3)
    assert rig.creates() == 3
    rig.fleet.tick(rig.ledger)
    assert sorted(row["id"] for row in rig.pool_rows()) == sorted(pool)
    assert len(rig.rows()) == 5
    assert rig.creates() == 3 + 2  # only what the pool could not give
    assert rig.fly.requests["update"] == 3 and rig.fly.requests["start"] == 3
    rig.clock.advance(2.0)  # a stopped machine starts in the warm start latency
    states = rig.on_fly()
    assert {states[machine_id] for machine_id in pool} == {"started"}
    # A pool machine gets what a created machine gets, but for stopping when its worker
    # exits and a worker id of its own for this run.
    created = next(m["config"] for m in rig.fake_machines() if m["id"] not in pool)
    assert created["auto_destroy"] is True
    for machine in rig.fake_machines():
        if machine["id"] in pool:
            config = machine["config"]
            assert config["auto_destroy"] is False and config["restart"] == {"policy": "no"}
            assert config["metadata"]["whisperfarm_run"] == RUN
            assert config["metadata"][POOL_KEY] == "warm"
            assert config["env"] == {
                **created["env"],
                "WHISPERFARM_WORKER_ID": f"{machine['id']}-{RUN}",
            }
            for key in ("image", "guest", "init", "stop_config", "restart"):
                assert config[key] == created[key]
    held = {row["id"]: row["run_id"] for row in MachineStore(rig.ledger).pool_machines()}
    assert held == {machine_id: RUN for machine_id in pool}


def test_a_pool_that_suffices_means_no_create(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=3)
    rig.warm(4)
    rig.tick_every(2.0, 10)
    assert rig.creates() == 4  # the warm-up's, none for the run
    assert len(rig.rows()) == 3 and all(row["pool"] for row in rig.rows())
    assert rig.fly.requests["update"] == 3


def test_a_pool_machine_bills_from_its_update_until_seen_stopped_and_stays(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)
    (machine_id,) = rig.warm(1)
    asked = rig.clock.now
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    rig.http.post(f"/_fake/machines/{machine_id}/crash")  # its worker exits
    assert rig.on_fly()[machine_id] == "stopped"  # not destroyed: back in the pool
    rig.clock.advance(1.0)
    rig.fleet.tick(rig.ledger)
    (row,) = rig.pool_rows()
    assert row["state"] == "stopped" and row["stopped_at"] == rig.clock.now
    assert MachineStore(rig.ledger).spend(RUN) == pytest.approx(11.0 * PRICE)
    assert row["started_at"] == asked
    assert MachineStore(rig.ledger).pool_machines()[0]["run_id"] is None  # free for another run
    # The run still wants a machine: it creates one rather than restart the same.
    assert rig.fly.requests["start"] == 1
    assert len(rig.rows()) == 2 and rig.creates() == 2
    rig.clock.advance(100.0)
    assert MachineStore(rig.ledger).spend(RUN) == pytest.approx(
        (11.0 + 100.0) * PRICE
    )  # the created one


def test_stop_stops_pool_machines_and_destroys_created_ones(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=4)
    pool = rig.warm(2)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(30.0)
    created = [row["id"] for row in rig.rows() if not row["pool"]]
    assert len(created) == 2
    rig.fleet.stop()
    states = rig.on_fly()
    assert {states[m] for m in pool} == {"stopped"}
    assert {states[m] for m in created} == {"destroyed"}
    rows = {row["id"]: row for row in rig.rows()}
    assert {rows[m]["state"] for m in pool} == {"stopped"}
    assert {rows[m]["state"] for m in created} == {"destroyed"}
    assert rig.fleet.leftovers == []
    assert sorted(rig.fleet.gone_workers()) == sorted([*created, *(f"{m}-{RUN}" for m in pool)])
    assert {row["run_id"] for row in MachineStore(rig.ledger).pool_machines()} == {None}
    spent = MachineStore(rig.ledger).spend(RUN)
    rig.clock.advance(1000.0)
    assert MachineStore(rig.ledger).spend(RUN) == spent  # nothing bills once stopped


def test_stop_waits_for_pool_machines_to_be_stopped(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=1)
    (machine_id,) = rig.warm(1)
    rig.fly.stop_latency = 5.0  # a stop takes a while on this machine
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    before = rig.clock.now
    rig.fleet.stop()
    assert rig.on_fly()[machine_id] == "stopped"
    (row,) = rig.pool_rows()
    assert row["stopped_at"] is not None
    assert row["state"] == "stopped" and row["stopped_at"] >= before + 5.0  # billed until then
    assert rig.fleet.leftovers == []


def test_at_the_budget_pool_machines_are_stopped_not_destroyed(
    make_rig: Callable[..., Rig],
) -> None:
    budget = 1.0
    rig = make_rig(max_machines=2, budget=budget, start_latency=10.0, stop_margin=10.0)
    (machine_id, _) = rig.warm(2)
    with pytest.raises(BudgetReached):
        for _ in range(200):
            rig.clock.advance(2.0)
            rig.fleet.tick(rig.ledger)
    rig.fleet.stop()
    assert MachineStore(rig.ledger).spend(RUN) <= budget
    assert rig.on_fly()[machine_id] == "stopped"
    assert all(state in ("stopped", "created") for state in rig.on_fly().values())
    assert rig.creates() == 2  # the warm-up's only


def test_an_update_that_starts_the_machine_itself_is_fine(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=2, update_launches=True)
    pool = rig.warm(2)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(2.0)
    rig.fleet.tick(rig.ledger)
    assert {rig.on_fly()[m] for m in pool} == {"started"}
    assert {row["state"] for row in rig.rows()} == {"started"}
    for machine in rig.fake_machines():
        assert [h["state"] for h in machine["history"]].count("started") == 1


def test_pool_machines_made_for_another_image_are_left_alone(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=1)
    (other,) = rig.warm(1, image=f"registry.fly.io/{APP}:v0")
    rig.fleet.tick(rig.ledger)
    assert rig.fly.requests["update"] == 0 and rig.creates() == 2
    assert rig.on_fly()[other] == "created"
    assert rig.pool_rows() == []


def test_a_pool_machine_another_live_run_holds_is_not_taken(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=2)
    held, free = rig.warm(2)
    rig.ledger.start_run("other", backend="fly", episode_ids=[], pid=os.getpid())
    assert MachineStore(rig.ledger).hold_pool_machine(held, "other", live_runs=set())
    rig.fleet.tick(rig.ledger)
    assert [row["id"] for row in rig.pool_rows()] == [free]
    assert rig.on_fly()[held] == "created"


def test_a_429_on_one_pool_machines_update_does_not_hold_up_the_others(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2)
    limited, fine = rig.warm(2)
    config = rig.fake_machines()[0]["config"]
    for _ in range(3):  # use up this machine's update burst
        rig.http.post(
            f"/v1/apps/{APP}/machines/{limited}",
            json={"config": config, "skip_launch": True},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    rig.fleet.tick(rig.ledger)  # its update gets 429; the client makes one attempt here
    rig.clock.advance(2.0)
    assert rig.on_fly()[fine] == "started"
    assert rig.on_fly()[limited] == "created"
    rig.fleet.tick(rig.ledger)
    rows = {row["id"]: row for row in rig.rows()}
    assert rows[limited]["state"] == "stopped"  # never ours: its short bill ends
    assert rows[fine]["state"] == "started"
    assert len(rows) == 3  # a create replaced the one that could not start


def test_a_pool_machine_stuck_starting_is_stopped_not_destroyed(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, start_timeout=60.0, faults=Faults(never_start=1))
    (stuck,) = rig.warm(1)
    rig.fleet.tick(rig.ledger)
    rig.tick_every(30.0, 3)  # past the start timeout: asked to stop
    assert rig.on_fly()[stuck] == "stopped"
    assert rig.pool_rows()[0]["state"] == "stopping"  # billing until seen stopped
    rig.tick_every(2.0, 1)
    row = next(row for row in rig.pool_rows() if row["id"] == stuck)
    assert row["state"] == "stopped" and "stuck starting" in (row["error"] or "")
    assert row["stopped_at"] == rig.clock.now
    assert len(rig.rows()) == 2  # a created machine took over


def stall_updating(rig: Rig) -> None:
    """The next launch finds the update still being applied through all its starts."""
    client = rig.fleet.client
    real_start, real_get = client.start, client.get

    def start(machine_id: str) -> None:
        raise FlyError("HTTP 412: unable to start machine from current state: 'updating'")

    def get(machine_id: str) -> Any:
        return real_get(machine_id).model_copy(update={"state": "updating"})

    client.start, client.get = start, get  # type: ignore[method-assign]
    rig.fleet.tick(rig.ledger)
    client.start, client.get = real_start, real_get  # type: ignore[method-assign]


def test_a_pool_machine_not_started_bills_until_seen_stopped_and_fly_may_start_it(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, update_launches=True)
    (machine_id,) = rig.warm(1)
    asked = rig.clock.now
    stall_updating(rig)  # "still updating after 3 starts"; then the update starts it
    (row,) = rig.pool_rows()
    assert row["state"] not in ("stopped", "failed") and row["stopped_at"] is None
    assert "still updating" in (row["error"] or "")
    rig.tick_every(2.0, 50)
    assert rig.on_fly()[machine_id] == "started"
    (row,) = rig.pool_rows()
    assert row["state"] == "started" and row["stopped_at"] is None  # ours, billing
    assert MachineStore(rig.ledger).spend(RUN) == pytest.approx((rig.clock.now - asked) * PRICE)
    assert len(rig.rows()) == 1 and rig.creates() == 1  # --max-machines 1 holds
    assert MachineStore(rig.ledger).pool_machines()[0]["run_id"] == RUN  # no other run takes it
    rig.fleet.stop()
    assert rig.on_fly()[machine_id] == "stopped" and rig.fleet.leftovers == []


def test_a_pool_machine_not_started_and_seen_stopped_ends_its_bill(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)  # the update does not start it
    (machine_id,) = rig.warm(1)
    stall_updating(rig)
    rig.tick_every(2.0, 1)
    row = next(row for row in rig.pool_rows() if row["id"] == machine_id)
    assert row["state"] == "stopped" and row["stopped_at"] == rig.clock.now
    assert MachineStore(rig.ledger).pool_machines()[0]["run_id"] is None
    assert len(rig.rows()) == 2  # a created machine took over


def test_a_pool_machine_seen_stopped_that_runs_again_for_the_run_bills_again(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)
    (machine_id,) = rig.warm(1)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    rig.http.post(f"/_fake/machines/{machine_id}/crash")
    rig.tick_every(1.0, 1)
    row = next(row for row in rig.pool_rows() if row["id"] == machine_id)
    assert row["state"] == "stopped"
    rig.client.start(machine_id)  # a start that took after all: it runs for this run
    rig.tick_every(2.0, 2)
    row = next(row for row in rig.pool_rows() if row["id"] == machine_id)
    assert row["state"] == "started" and row["stopped_at"] is None
    assert MachineStore(rig.ledger).pool_machines()[0]["run_id"] == RUN
    spent = MachineStore(rig.ledger).spend(RUN)
    rig.clock.advance(100.0)
    assert MachineStore(rig.ledger).spend(RUN) == pytest.approx(
        spent + 2 * 100.0 * PRICE
    )  # both bill
    rig.fleet.stop()
    assert rig.on_fly()[machine_id] == "stopped" and rig.fleet.leftovers == []


def test_at_the_budget_with_local_workers_a_pool_machine_fly_started_is_stopped(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(
        max_machines=1,
        update_launches=True,
        budget=2.0,
        with_local_workers=True,
        start_latency=10.0,
        stop_margin=10.0,
    )
    (machine_id,) = rig.warm(1)
    stall_updating(rig)
    rig.tick_every(2.0, 200)
    assert rig.fleet._capped
    assert all(state in ("stopped", "destroyed") for state in rig.on_fly().values())
    assert rig.on_fly()[machine_id] == "stopped"
    assert MachineStore(rig.ledger).spend(RUN) <= 2.0


def test_a_stop_that_fails_on_a_machine_stopped_anyway_is_no_leftover(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)
    (machine_id,) = rig.warm(1)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    rig.http.post(f"/_fake/machines/{machine_id}/crash")  # stopped before we ask

    def stop(machine_id: str, **kwargs: Any) -> None:
        raise FlyError("HTTP 404: machine not found")

    rig.fleet.client.stop = stop  # type: ignore[method-assign]
    rig.fleet.stop()
    (row,) = rig.pool_rows()
    assert row["state"] == "stopped"
    assert rig.fleet.leftovers == []


# -- a lagging list: absence is not destruction -------------------------------------------------


def test_a_lagging_list_never_makes_more_than_max_machines_and_stop_leaves_none(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=3, faults=Faults(list_lag=3.0))
    for _ in range(20):  # 10 s of ticks, every half second
        rig.clock.advance(0.5)
        rig.fleet.tick(rig.ledger)
        assert len(rig.alive_on_fly()) <= 3
    assert rig.creates() == 3
    assert rig.fly.snapshot()["max_concurrent_active"] == 3
    rig.fleet.stop()
    assert rig.alive_on_fly() == []
    assert rig.fleet.leftovers == []


def test_an_empty_list_is_checked_machine_by_machine_not_believed(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    rig.fleet.tick(rig.ledger)
    gets = rig.fly.requests["get"]
    rig.fly.faults.list_empty = 3  # Fly's incident: List answers [] for an app with machines
    rig.tick_every(2.0, 3)
    assert {row["state"] for row in rig.rows()} == {"started"}
    assert rig.creates() == 2 and len(rig.alive_on_fly()) == 2
    assert rig.fly.requests["get"] - gets == 2 * 3  # one Get per machine per tick
    assert rig.fly.requests["rate_limited"] == 0


def test_a_machine_gone_while_the_list_lags_is_seen_gone_by_get_and_replaced(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2, faults=Faults(list_lag=3.0))
    rig.tick_every(2.0, 4)
    first, _ = (row["id"] for row in rig.rows())
    rig.http.post(f"/_fake/machines/{first}/crash")  # exits, Fly auto-destroys it
    rig.tick_every(0.5, 1)  # the list still shows it started: it keeps counting
    assert len(rig.rows()) == 2
    rig.tick_every(3.0, 2)  # the list shows it destroyed (include_deleted): replaced
    rows = {row["id"]: row for row in rig.rows()}
    assert rows[first]["state"] == "destroyed" and len(rows) == 3
    assert rig.fly.snapshot()["max_concurrent_active"] == 2
    rig.fleet.stop()
    assert rig.alive_on_fly() == []


def test_a_machine_on_an_unhealthy_host_is_neither_gone_nor_adopted_and_is_destroyed_at_the_end(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2)
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(6.0)
    sick = rig.rows()[0]["id"]
    rig.fly.set_host(sick, "unreachable", "incomplete")  # the filtered list can't see it
    rig.tick_every(2.0, 5)
    rows = {row["id"]: row for row in rig.rows()}
    assert rows[sick]["state"] == "started"
    assert rig.creates() == 2 and len(rows) == 2
    rig.fleet.stop()
    assert rig.alive_on_fly() == [] and rig.fleet.leftovers == []


def test_stop_confirms_every_destroy_with_get_not_list(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_machines=3, faults=Faults(list_lag=30.0))
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    gets = rig.fly.requests["get"]
    rig.fleet.stop()
    assert rig.alive_on_fly() == [] and rig.fleet.leftovers == []
    assert rig.fly.requests["get"] - gets >= 3
    assert {row["state"] for row in rig.rows()} == {"destroyed"}


def test_stop_waits_for_pool_machines_without_polling_the_list(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=2)
    rig.warm(2)
    rig.fly.stop_latency = 5.0
    rig.fleet.tick(rig.ledger)
    rig.clock.advance(10.0)
    lists = rig.fly.requests["list"]
    rig.fleet.stop()
    assert {state for state in rig.on_fly().values()} == {"stopped"}
    assert rig.fly.requests["list"] - lists <= 1  # the one look for strays
    assert rig.fly.requests["wait"] >= 1  # one /wait, not a list loop
    assert rig.fly.requests["rate_limited"] == 0
    assert rig.fleet.leftovers == []


def test_a_503_capacity_error_backs_off_like_any_capacity_error(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1, faults=Faults(capacity_503=1))
    rig.fleet.tick(rig.ledger)  # not an outage, not fatal
    assert rig.creates() == 1 and rig.rows() == []
    rig.clock.advance(CREATE_BACKOFF_SECONDS + 0.5)
    rig.fleet.tick(rig.ledger)
    assert rig.creates() == 2 and len(rig.alive_on_fly()) == 1


def test_a_pool_start_answered_with_status_error_is_not_counted_as_running(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_machines=1)
    (pooled,) = rig.warm(1)
    rig.fly.faults.start_error = 1
    rig.fleet.tick(rig.ledger)
    (row,) = rig.pool_rows()
    assert row["state"] == "starting" and "could not start" in (
        row["error"] or ""
    )  # bills till seen
    rig.tick_every(2.0, 3)
    assert {r["id"]: r["state"] for r in rig.pool_rows()} == {pooled: "stopped"}
    assert rig.on_fly()[pooled] == "created"  # never started
    created = [r for r in rig.rows() if not r["pool"]]
    assert len(created) == 1 and rig.alive_on_fly() == [pooled, created[0]["id"]]
    rig.fleet.stop()
    assert rig.on_fly()[created[0]["id"]] == "destroyed" and rig.fleet.leftovers == []
