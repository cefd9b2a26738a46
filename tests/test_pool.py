"""The warm pool (whisperfarm/fly/pool.py): its pure rules, the ledger's pool records,
``launch`` under both readings of Fly's update, ``warm`` and ``reap`` against the fake
Machines API in-process with a fake clock."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlite_utils import Database
from starlette.testclient import TestClient

from tests.fakefly import create_app
from tests.support.clock import FakeClock
from tests.support.in_process import BASE_URL, in_process
from whisperfarm.errors import FlyGPUUnsupported, UsageError
from whisperfarm.fly.client import Machine, MachinesClient, build_worker_config
from whisperfarm.fly.pool import (
    POOL_KEY,
    POOL_VALUE,
    as_pool_config,
    describe_storage,
    fits,
    idle_config,
    launch,
    ready_in_ledger,
    usable,
    warm,
)
from whisperfarm.fly.pricing import SIZES, stopped_cost_per_month
from whisperfarm.fly.reap import reap
from whisperfarm.fly.store import MachineStore
from whisperfarm.ledger import Ledger
from whisperfarm.migrations import migrations
from whisperfarm.money import machine_cost

APP = "wf-test"
TOKEN = "fake-token"
IMAGE = f"registry.fly.io/{APP}:v1"
SIZE = SIZES["performance-2x"]
BASE = f"https://api.machines.dev/v1/apps/{APP}/machines"


def worker_config(run_id: str = "r1", name: str = "wf-pool-001", **env: str) -> dict[str, Any]:
    return build_worker_config(
        image=IMAGE, size=SIZE, env=env, run_id=run_id, machine_name=name, model="tiny.en"
    )


def machine(
    machine_id: str,
    *,
    state: str = "stopped",
    image: str = IMAGE,
    cpus: int = 2,
    memory_mb: int = 4096,
    region: str = "ord",
    pool: bool = True,
) -> Machine:
    metadata = {"managed_by": "whisperfarm", **({POOL_KEY: POOL_VALUE} if pool else {})}
    return Machine(
        id=machine_id,
        name=f"wf-pool-{machine_id}",
        state=state,
        region=region,
        config={
            "image": image,
            "guest": {"cpu_kind": "performance", "cpus": cpus, "memory_mb": memory_mb},
            "metadata": metadata,
        },
    )


# -- pure rules --------------------------------------------------------------------------------


def test_as_pool_config_stops_instead_of_destroying_and_names_the_runs_worker() -> None:
    base = worker_config(WHISPERFARM_TOKEN="secret-run-token")
    config = as_pool_config(base, worker_id="m1-r1")
    assert config["auto_destroy"] is False
    assert config["restart"] == {"policy": "no"}
    assert config["metadata"] == {
        "whisperfarm_run": "r1",
        "whisperfarm_machine": "wf-pool-001",
        "managed_by": "whisperfarm",
        POOL_KEY: POOL_VALUE,
    }
    assert config["env"]["WHISPERFARM_WORKER_ID"] == "m1-r1"
    assert config["env"]["WHISPERFARM_TOKEN"] == "secret-run-token"
    assert {k: v for k, v in config.items() if k not in ("auto_destroy", "metadata", "env")} == {
        k: v for k, v in base.items() if k not in ("auto_destroy", "metadata", "env")
    }
    assert base["auto_destroy"] is True and POOL_KEY not in base["metadata"]  # not mutated


def test_idle_config_belongs_to_no_run() -> None:
    config = idle_config(image=IMAGE, size=SIZE, model="tiny.en", name="wf-pool-007")
    assert "whisperfarm_run" not in config["metadata"]
    assert config["metadata"][POOL_KEY] == POOL_VALUE
    assert config["metadata"]["managed_by"] == "whisperfarm"
    assert config["auto_destroy"] is False and config["restart"] == {"policy": "no"}
    assert config["guest"] == {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}
    assert "WHISPERFARM_TOKEN" not in config["env"]


def test_usable_takes_idle_fitting_unheld_pool_machines_in_name_order() -> None:
    listed = [
        machine("c"),
        machine("a", state="created"),
        machine("b"),
        machine("started", state="started"),
        machine("held"),
        machine("other-image", image="registry.fly.io/wf-test:v2"),
        machine("other-size", cpus=4, memory_mb=8192),
        machine("other-region", region="ams"),
        machine("not-pool", pool=False),
        machine("failed", state="failed"),
    ]
    chosen = usable(listed, image=IMAGE, size=SIZE, region="ord", held={"held"})
    assert [m.id for m in chosen] == ["a", "b", "c"]
    anywhere = usable(listed, image=IMAGE, size=SIZE, region=None, held={"held"})
    assert [m.id for m in anywhere] == ["a", "b", "c", "other-region"]


def test_fits_needs_the_same_memory_too() -> None:
    assert fits(machine("m"), image=IMAGE, size=SIZE, region=None)
    assert not fits(machine("m", memory_mb=8192), image=IMAGE, size=SIZE, region=None)


def test_stopped_machines_cost_their_root_filesystems_only() -> None:
    assert stopped_cost_per_month(100, 2.0) == pytest.approx(30.0)
    assert stopped_cost_per_month(0, 2.0) == 0
    with pytest.raises(ValueError):
        stopped_cost_per_month(-1, 2.0)
    text = describe_storage(10, 1.5)
    assert "$2.25 a month" in text and "10 × 1.5 GB" in text and "$0.15/GB-month" in text
    assert "estimate" in text


# -- the ledger's records ------------------------------------------------------------------------


def remember(ledger: Ledger, machine_id: str) -> None:
    MachineStore(ledger).record_pool_machine(
        machine_id=machine_id,
        app=APP,
        name=f"wf-pool-{machine_id}",
        region="ord",
        size=SIZE.name,
        image=IMAGE,
        state="stopped",
    )


def test_a_pool_machine_is_held_by_one_live_run_at_a_time(ledger: Ledger) -> None:
    remember(ledger, "m1")
    assert MachineStore(ledger).hold_pool_machine("m1", "r1", live_runs=set())
    assert not MachineStore(ledger).hold_pool_machine(
        "m1", "r2", live_runs={"r1"}
    )  # r1 is going on
    assert MachineStore(ledger).hold_pool_machine("m1", "r2", live_runs=set())  # r1 crashed: free
    MachineStore(ledger).release_pool_machine(
        "m1", "r1", state="stopped"
    )  # not r1's any more: no effect
    assert MachineStore(ledger).pool_machines()[0]["run_id"] == "r2"
    MachineStore(ledger).release_pool_machine("m1", "r2", state="stopped")
    assert MachineStore(ledger).pool_machines()[0]["run_id"] is None
    assert not MachineStore(ledger).hold_pool_machine("unknown", "r3", live_runs=set())
    remember(ledger, "m1")  # seen again: its holder is kept, its details refreshed
    MachineStore(ledger).hold_pool_machine("m1", "r3", live_runs=set())
    remember(ledger, "m1")
    assert MachineStore(ledger).pool_machines(APP)[0]["run_id"] == "r3"
    MachineStore(ledger).forget_pool_machine("m1")
    assert MachineStore(ledger).pool_machines() == []


def test_the_plan_counts_the_idle_fitting_pool_machines_the_ledger_knows(
    ledger: Ledger,
) -> None:
    """What the plan before a run assumes starts at once, without an API call."""
    for machine_id in ("m1", "m2", "m3", "m4", "m5"):
        remember(ledger, machine_id)
    MachineStore(ledger).update_pool_machine("m2", state="started")  # busy
    MachineStore(ledger).record_pool_machine(
        machine_id="m3", app=APP, name="wf-pool-m3", region="ord", size=SIZE.name,
        image=f"registry.fly.io/{APP}:old", state="stopped",
    )  # fmt: skip
    with ledger._write() as conn:  # held by a run whose process is this test: live
        conn.execute(
            "INSERT INTO runs (id, backend, state, started_at, pid) VALUES"
            " ('live', 'fly', 'running', 0, ?)",
            (os.getpid(),),
        )
    assert MachineStore(ledger).hold_pool_machine("m4", "live", live_runs=set())
    ready = ready_in_ledger(ledger, APP, image=IMAGE, size=SIZE, region="ord")
    assert ready == 2  # m1 and m5
    assert ready_in_ledger(ledger, APP, image=IMAGE, size=SIZE, region="iad") == 0
    other = SIZES["performance-4x"]
    assert ready_in_ledger(ledger, APP, image=IMAGE, size=other, region=None) == 0


def record_use(ledger: Ledger, machine_id: str, run_id: str) -> None:
    MachineStore(ledger).record_machine(
        machine_id=machine_id,
        run_id=run_id,
        name=f"wf-pool-{machine_id}",
        app=APP,
        region="ord",
        size=SIZE.name,
        cpus=2,
        memory_mb=4096,
        usd_per_second=0.01,
        state="starting",
        pool=True,
    )


def test_a_pool_machine_bills_each_run_separately(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    record_use(ledger, "m1", "r1")
    clock.advance(100)
    MachineStore(ledger).update_machine("m1", state="stopped", run_id="r1")
    clock.advance(1000)  # stopped: nothing billed
    record_use(ledger, "m1", "r2")
    clock.advance(30)
    rows = {row["run_id"]: row for row in MachineStore(ledger).machines()}
    assert machine_cost(rows["r1"], clock()) == pytest.approx(1.0)
    assert machine_cost(rows["r2"], clock()) == pytest.approx(0.3)  # still running
    assert rows["r1"]["pool"] == 1 and rows["r1"]["state"] == "stopped"
    assert MachineStore(ledger).spend("r1") == pytest.approx(1.0)
    assert MachineStore(ledger).spend() == pytest.approx(1.3)


def test_m006_keeps_the_machines_of_an_older_ledger(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m006_machine_pool")
    old.execute(
        "INSERT INTO machines (id, run_id, name, app, region, size, cpus, memory_mb,"
        " usd_per_second, state, created_at, started_at, stopped_at, updated_at)"
        " VALUES ('m1', 'r1', 'wf-r1-001', 'app', 'ord', 'performance-2x', 2, 4096, 0.5,"
        " 'destroyed', 100, 100, 110, 110)"
    )
    old.conn.commit()
    old.close()
    ledger = Ledger(path, clock=FakeClock(200))
    try:
        (row,) = MachineStore(ledger).machines()
        assert (row["id"], row["run_id"], row["pool"], row["stopped_at"]) == ("m1", "r1", 0, 110)
        assert MachineStore(ledger).spend("r1") == pytest.approx(5.0)
        record_use(ledger, "m1", "r2")  # the same machine in another run: a second row
        assert [r["run_id"] for r in MachineStore(ledger).machines()] == ["r1", "r2"]
    finally:
        ledger.close()


# -- launch: update, start, under both readings ------------------------------------------------


def machine_json(state: str) -> dict[str, Any]:
    return {"id": "m1", "name": "wf-pool-001", "state": state, "config": {"image": IMAGE}}


@pytest.fixture
def client() -> Iterator[MachinesClient]:
    sleeps: list[float] = []
    with MachinesClient(APP, TOKEN, sleep=sleeps.append, max_attempts=2) as client:
        yield client


def test_launch_updates_with_skip_launch_then_starts(client, respx_mock) -> None:
    updated = respx_mock.post(f"{BASE}/m1").respond(json=machine_json("stopped"))
    started = respx_mock.post(f"{BASE}/m1/start").respond(json={"previous_state": "stopped"})
    result = launch(client, "m1", worker_config())
    assert result.going and result.state == "starting" and result.error is None
    assert json.loads(updated.calls.last.request.content)["skip_launch"] is True
    assert started.call_count == 1


def test_launch_does_not_start_what_the_update_started(client, respx_mock) -> None:
    respx_mock.post(f"{BASE}/m1").respond(json=machine_json("starting"))
    started = respx_mock.post(f"{BASE}/m1/start").respond(json={})
    assert launch(client, "m1", worker_config()).going
    assert started.call_count == 0


def test_a_start_refused_because_it_is_starting_counts_as_started(client, respx_mock) -> None:
    respx_mock.post(f"{BASE}/m1").respond(json=machine_json("stopped"))
    respx_mock.post(f"{BASE}/m1/start").respond(
        412, json={"error": "unable to start machine from current state: 'starting'"}
    )
    respx_mock.get(f"{BASE}/m1").respond(json=machine_json("starting"))
    result = launch(client, "m1", worker_config())
    assert result.going and result.state == "starting"


def test_a_start_refused_while_updating_is_tried_again(client, respx_mock) -> None:
    respx_mock.post(f"{BASE}/m1").respond(json=machine_json("updating"))
    started = respx_mock.post(f"{BASE}/m1/start").mock(
        side_effect=[
            httpx.Response(412, json={"error": "machine is updating"}),
            httpx.Response(200, json={"previous_state": "stopped"}),
        ]
    )
    respx_mock.get(f"{BASE}/m1").respond(json=machine_json("updating"))
    slept: list[float] = []
    assert launch(client, "m1", worker_config(), sleep=slept.append).going
    assert started.call_count == 2 and slept == [1.0]


def test_a_start_refused_for_good_leaves_it_with_the_reason(client, respx_mock) -> None:
    respx_mock.post(f"{BASE}/m1").respond(json=machine_json("stopped"))
    respx_mock.post(f"{BASE}/m1/start").respond(412, json={"error": "machine is failed"})
    respx_mock.get(f"{BASE}/m1").respond(json=machine_json("failed"))
    result = launch(client, "m1", worker_config())
    assert not result.going and result.state == "failed"
    assert result.error is not None and "machine is failed" in result.error


def test_an_update_refused_or_lost_is_reported_not_raised(client, respx_mock) -> None:
    respx_mock.post(f"{BASE}/gone").respond(404, json={"error": "machine not found"})
    refused = launch(client, "gone", worker_config())
    assert (refused.going, refused.state) == (False, "stopped")
    assert refused.error is not None and "not found" in refused.error
    respx_mock.post(f"{BASE}/busy").respond(503, json={"error": "try later"})
    lost = launch(client, "busy", worker_config())
    assert (lost.going, lost.state) == (False, "unknown")  # it may have been applied


def test_launch_refuses_a_gpu_config_before_any_request(client, respx_mock) -> None:
    config = worker_config()
    config["guest"]["gpu_kind"] = "a100-pcie-40gb"
    with pytest.raises(FlyGPUUnsupported):
        launch(client, "m1", config)
    assert respx_mock.calls.call_count == 0


@pytest.mark.parametrize("update_launches", [False, True], ids=["skip-respected", "update-starts"])
def test_launch_against_the_fake_under_both_readings(update_launches: bool) -> None:
    clock = FakeClock()
    app = create_app(
        app=APP,
        token=TOKEN,
        clock=clock,
        sleep=clock.sleep,
        tick_interval=None,
        start_latency=20.0,
        warm_start_latency=2.0,
        update_launches=update_launches,
    )
    with TestClient(app) as fake, in_process(fake) as http:
        client = MachinesClient(APP, TOKEN, base_url=BASE_URL, http=http, sleep=clock.sleep_sync)
        idle = idle_config(image=IMAGE, size=SIZE, model="tiny.en", name="wf-pool-001")
        made = client.create(idle, name="wf-pool-001", skip_launch=True)
        clock.advance(60)  # warmed a while ago
        assert client.get(made.id).state == "created"
        config = as_pool_config(worker_config(WHISPERFARM_TOKEN="t2"), worker_id="x")
        assert launch(client, made.id, config).going
        clock.advance(2.0)
        after = client.get(made.id)
        assert after.state == "started"  # in the warm start latency, not the 20 s
        assert after.config["env"]["WHISPERFARM_TOKEN"] == "t2"
        history = [h["state"] for h in app.state.fly.snapshot()["machines"][0]["history"]]
        assert history.count("started") == 1


# -- warm ---------------------------------------------------------------------------------------


class Rig:
    def __init__(self, tmp_path: Path, **fake: Any):
        self.clock = FakeClock()
        self.app = create_app(
            app=APP, token=TOKEN, clock=self.clock, sleep=self.clock.sleep, tick_interval=None,
            start_latency=5.0, **fake,
        )  # fmt: skip
        self.http = in_process(TestClient(self.app))
        self.client = MachinesClient(
            APP,
            TOKEN,
            base_url=BASE_URL,
            http=self.http,
            sleep=self.clock.sleep_sync,
            clock=self.clock,
            max_attempts=1,
        )
        self.ledger = Ledger(tmp_path / "home" / "ledger.db", clock=self.clock)

    @property
    def fly(self) -> Any:
        return self.app.state.fly

    def warm(self, target: int, **kwargs: Any) -> Any:
        self.clock.advance(3.0)  # a while since the last command: Fly's create burst is back
        defaults: dict[str, Any] = {
            "image": IMAGE, "size": SIZE, "model": "tiny.en", "rootfs_gb": 2.0
        }  # fmt: skip
        return warm(
            self.client,
            self.ledger,
            target,
            clock=self.clock,
            sleep=self.clock.sleep_sync,
            **(defaults | kwargs),
        )

    def on_fly(self) -> dict[str, str]:
        return {m["id"]: m["state"] for m in self.fly.snapshot()["machines"]}

    def close(self) -> None:
        self.ledger.close()
        self.http.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def test_warm_creates_stopped_machines_at_the_create_rate_and_records_them(rig: Rig) -> None:
    report = rig.warm(5, region="ams")
    assert len(report.created) == 5 and report.kept == report.destroyed == []
    assert report.usd_per_month == pytest.approx(5 * 2.0 * 0.15)
    assert rig.fly.requests["create"] == 5 and rig.fly.requests["rate_limited"] == 0
    assert sum(rig.clock.slept) == pytest.approx(2.0)  # burst of 3, then 1 a second
    machines = rig.fly.snapshot()["machines"]
    assert {m["state"] for m in machines} == {"created"}  # never launched
    assert all([h["state"] for h in m["history"]] == ["created"] for m in machines)
    config = machines[0]["config"]
    assert config["auto_destroy"] is False and config["restart"] == {"policy": "no"}
    assert config["metadata"][POOL_KEY] == POOL_VALUE
    assert {m["region"] for m in machines} == {"ams"}
    assert [m["name"] for m in machines] == [f"wf-pool-00{n}" for n in range(1, 6)]
    pool = MachineStore(rig.ledger).pool_machines(APP)
    assert sorted(row["id"] for row in pool) == sorted(report.created)
    assert {row["image"] for row in pool} == {IMAGE}


def test_warm_tops_up_shrinks_replaces_misfits_and_zero_destroys_all(rig: Rig) -> None:
    first = rig.warm(2)
    second = rig.warm(4)
    assert sorted(second.kept) == sorted(first.created) and len(second.created) == 2
    names = sorted(m["name"] for m in rig.fly.snapshot()["machines"])
    assert names == ["wf-pool-001", "wf-pool-002", "wf-pool-003", "wf-pool-004"]
    third = rig.warm(3)
    assert len(third.kept) == 3 and len(third.destroyed) == 1 and third.created == []
    bigger = rig.warm(3, size=SIZES["performance-4x"])  # other-size machines are replaced
    assert len(bigger.destroyed) == 3 and len(bigger.created) == 3
    alive = [m for m in rig.fly.snapshot()["machines"] if m["state"] != "destroyed"]
    assert {m["config"]["guest"]["cpus"] for m in alive} == {4}
    gone = rig.warm(0)
    assert len(gone.destroyed) == 3 and gone.stopped == 0 and gone.usd_per_month == 0
    assert set(rig.on_fly().values()) == {"destroyed"}
    assert MachineStore(rig.ledger).pool_machines() == []


def test_warm_leaves_machines_a_live_run_uses_alone(rig: Rig) -> None:
    report = rig.warm(2)
    busy = report.created[0]
    config = as_pool_config(worker_config("r1", "wf-pool-001"), worker_id="x")
    rig.client.update(busy, config, skip_launch=True)
    rig.client.start(busy)
    rig.ledger.start_run("r1", backend="fly", episode_ids=[], pid=os.getpid())
    MachineStore(rig.ledger).hold_pool_machine(report.created[1], "r1", live_runs=set())
    zero = rig.warm(0)
    assert sorted(zero.busy) == sorted(report.created) and zero.destroyed == []
    assert rig.on_fly()[busy] in ("starting", "started")


def test_warm_stops_machines_left_running_by_a_run_that_is_over(rig: Rig) -> None:
    report = rig.warm(2)
    orphan, unmarked = report.created
    rig.ledger.start_run("dead", backend="fly", episode_ids=[], pid=None)
    config = as_pool_config(worker_config("dead", "wf-pool-001"), worker_id="x")
    rig.client.update(orphan, config, skip_launch=True)
    rig.client.start(orphan)
    record_use(rig.ledger, orphan, "dead")
    MachineStore(rig.ledger).hold_pool_machine(orphan, "dead", live_runs=set())
    rig.client.start(unmarked)  # started by hand: no run at all
    rig.clock.advance(10.0)
    again = rig.warm(2)
    assert again.busy == [] and sorted(again.stopped_now) == sorted(report.created)
    assert {rig.on_fly()[m] for m in report.created} == {"stopped"}
    (row,) = MachineStore(rig.ledger).machines("dead")
    assert row["state"] == "stopped" and row["stopped_at"] is not None
    rig.client.start(unmarked)
    rig.clock.advance(10.0)
    gone = rig.warm(0)
    assert gone.busy == [] and sorted(gone.destroyed) == sorted(report.created)
    assert set(rig.on_fly().values()) == {"destroyed"}


def test_warm_refuses_a_negative_size(rig: Rig) -> None:
    with pytest.raises(UsageError):
        rig.warm(-1)


# -- reap ---------------------------------------------------------------------------------------


def test_reap_stops_pool_machines_left_running_and_leaves_idle_ones(rig: Rig) -> None:
    report = rig.warm(3)
    running, idle, _ = report.created
    rig.ledger.start_run("dead", backend="fly", episode_ids=[], pid=None)
    rig.ledger.end_run("dead", "crashed")
    config = as_pool_config(worker_config("dead", "wf-pool-001"), worker_id="x")
    rig.client.update(running, config, skip_launch=False)
    rig.clock.advance(5)
    assert rig.on_fly()[running] == "started"
    record_use(rig.ledger, running, "dead")
    MachineStore(rig.ledger).hold_pool_machine(running, "dead", live_runs=set())

    result = reap(rig.client, rig.ledger)
    assert result.stopped == [running] and result.destroyed == [] and result.failed == []
    assert sorted(result.idle) == sorted(report.created[1:])
    assert rig.on_fly()[running] == "stopped"  # back in the pool, not destroyed
    (row,) = MachineStore(rig.ledger).machines("dead")
    assert row["state"] == "stopped" and row["stopped_at"] is not None
    assert {r["id"]: r["run_id"] for r in MachineStore(rig.ledger).pool_machines()}[running] is None

    everything = reap(rig.client, rig.ledger, pool=True)
    assert sorted(everything.destroyed) == sorted(report.created) and everything.idle == []
    assert set(rig.on_fly().values()) == {"destroyed"}
    assert MachineStore(rig.ledger).pool_machines() == []
    assert idle in everything.destroyed


@pytest.mark.parametrize("state", ["failed", "suspended"])
def test_reap_takes_a_failed_pool_machine_as_not_running_and_ends_its_runs_bill(
    rig: Rig, state: str
) -> None:
    (machine_id,) = rig.warm(1).created
    rig.ledger.start_run("dead", backend="fly", episode_ids=[], pid=None)
    config = as_pool_config(worker_config("dead", "wf-pool-001"), worker_id="x")
    rig.client.update(machine_id, config, skip_launch=True)
    record_use(rig.ledger, machine_id, "dead")
    rig.fly.machines[machine_id].state = state
    before = rig.clock.now

    result = reap(rig.client, rig.ledger)
    assert result.failed == result.unstopped == [] and result.idle == [machine_id]
    assert rig.clock.now == before  # no stop asked, none waited for
    (row,) = MachineStore(rig.ledger).machines("dead")
    assert row["state"] == state and row["stopped_at"] == before
    spent = MachineStore(rig.ledger).spend("dead")
    rig.clock.advance(3600)
    assert MachineStore(rig.ledger).spend("dead") == spent

    everything = reap(rig.client, rig.ledger, pool=True)
    assert everything.destroyed == [machine_id] and everything.failed == []
