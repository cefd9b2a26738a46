"""The fake Machines API itself: in-process with a fake clock, plus one real-process run."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.fakefly import Faults, LaunchSpec, create_app
from tests.support.clock import FakeClock
from tests.support.in_process import BASE_URL, in_process
from tests.support.paths import REPO as ROOT
from whisperfarm.fly.client import MachinesClient, build_worker_config

if TYPE_CHECKING:
    # What the TestClient answers with: httpx2's Response in recent Starlette, not httpx's.
    from starlette.testclient import httpx as testclient_httpx

    Answer = testclient_httpx.Response

APP = "wf-test"
TOKEN = "fake-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = f"/v1/apps/{APP}/machines"


def worker_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "image": "registry.fly.io/wf-test:v1",
        "guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048},
        "env": {"WHISPERFARM_RUN_ID": "r1"},
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "metadata": {"whisperfarm_run": "r1"},
    }
    return config | overrides


class FakeHandle:
    def __init__(self, spec: LaunchSpec, pid: int):
        self.spec = spec
        self.pid: int | None = pid
        self.signals: list[int] = []
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.code = -signal.SIGKILL


class FakeLauncher:
    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []

    def __call__(self, spec: LaunchSpec) -> FakeHandle:
        handle = FakeHandle(spec, pid=1000 + len(self.handles))
        self.handles.append(handle)
        return handle


def make(clock: FakeClock, **kwargs: Any) -> TestClient:
    kwargs.setdefault("start_latency", 5.0)
    kwargs.setdefault("token", TOKEN)
    app = create_app(app=APP, clock=clock, sleep=clock.sleep, tick_interval=None, **kwargs)
    return TestClient(app, headers=AUTH)


@pytest.fixture
def fake(clock: FakeClock) -> TestClient:
    return make(clock)


def create(fake: TestClient, name: str = "w1", **body: Any) -> Answer:
    body.setdefault("config", worker_config())
    return fake.post(BASE, json={"name": name, **body})


def created(fake: TestClient, name: str = "w1", **body: Any) -> dict[str, Any]:
    response = create(fake, name, **body)
    assert response.status_code == 200, response.text
    return response.json()


def state_of(fake: TestClient, machine_id: str) -> str:
    return fake.get(f"{BASE}/{machine_id}").json()["state"]


def history(fake: TestClient, machine_id: str) -> list[str]:
    machines = fake.get("/_fake/state").json()["machines"]
    (machine,) = [m for m in machines if m["id"] == machine_id]
    return [h["state"] for h in machine["history"]]


# -- lifecycle ---------------------------------------------------------------------------------


def test_machine_moves_created_starting_started_with_the_clock(fake, clock):
    machine = created(fake, region="ams")
    assert machine["state"] == "created"
    assert machine["region"] == "ams"
    assert machine["name"] == "w1"
    assert machine["config"]["metadata"] == {"whisperfarm_run": "r1"}
    assert state_of(fake, machine["id"]) == "starting"
    clock.advance(4.9)
    assert state_of(fake, machine["id"]) == "starting"
    clock.advance(0.1)
    assert state_of(fake, machine["id"]) == "started"


def test_stop_without_auto_destroy_ends_stopped_and_can_start_again(fake, clock):
    machine = created(fake, config=worker_config(auto_destroy=False))
    clock.advance(5)
    response = fake.post(f"{BASE}/{machine['id']}/stop", json={"signal": "SIGTERM"})
    assert response.json() == {"ok": True}
    assert state_of(fake, machine["id"]) == "stopped"
    fake.post(f"{BASE}/{machine['id']}/start")
    clock.advance(5)
    assert state_of(fake, machine["id"]) == "started"
    assert history(fake, machine["id"]) == [
        "created", "starting", "started", "stopping", "stopped", "starting", "started",
    ]  # fmt: skip


def test_stop_with_auto_destroy_ends_destroyed(fake, clock):
    machine = created(fake)
    clock.advance(5)
    fake.post(f"{BASE}/{machine['id']}/stop", json={})
    assert history(fake, machine["id"])[-4:] == ["stopping", "stopped", "destroying", "destroyed"]


def test_destroy_needs_force_while_running_and_gone_is_404(fake, clock):
    machine = created(fake)
    clock.advance(5)
    refused = fake.delete(f"{BASE}/{machine['id']}")
    assert refused.status_code == 412 and "not currently stopped" in refused.json()["error"]
    assert fake.delete(f"{BASE}/{machine['id']}", params={"force": "true"}).json() == {"ok": True}
    assert state_of(fake, machine["id"]) == "destroyed"
    assert fake.delete(f"{BASE}/{machine['id']}", params={"kill": "true"}).status_code == 404
    assert fake.get(f"{BASE}/nope").status_code == 404


def test_list_filters_by_metadata_and_hides_destroyed(fake, clock):
    a = created(fake, "a")
    created(fake, "b", config=worker_config(metadata={"whisperfarm_run": "r2"}))
    fake.delete(f"{BASE}/{a['id']}", params={"force": "true"})
    assert [m["name"] for m in fake.get(BASE).json()] == ["b"]
    everything = fake.get(BASE, params={"include_deleted": "true"}).json()
    assert [m["name"] for m in everything] == ["a", "b"]
    run2 = fake.get(BASE, params={"metadata.whisperfarm_run": "r2"}).json()
    assert [m["name"] for m in run2] == ["b"]


def test_state_endpoint_tracks_max_concurrently_started(clock):
    fake = make(clock, rate_limit=False)
    ids = [created(fake, f"w{i}")["id"] for i in range(3)]
    clock.advance(5)
    fake.get(BASE)
    for machine_id in ids:
        fake.delete(f"{BASE}/{machine_id}", params={"force": "true"})
    snapshot = fake.get("/_fake/state").json()
    assert snapshot["max_concurrent_started"] == 3
    assert snapshot["started_now"] == 0
    assert {m["state"] for m in snapshot["machines"]} == {"destroyed"}
    assert snapshot["requests"]["create"] == 3


# -- wait ------------------------------------------------------------------------------------


def test_wait_returns_once_the_state_is_reached(fake, clock):
    machine = created(fake)
    before = clock()
    response = fake.get(f"{BASE}/{machine['id']}/wait", params={"state": "started", "timeout": 60})
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert 5 <= clock() - before < 5.1  # it waited for the start latency, no longer


def test_wait_times_out_with_408_and_flys_body(fake, clock):
    machine = created(fake)
    before = clock()
    response = fake.get(f"{BASE}/{machine['id']}/wait", params={"state": "started", "timeout": 2})
    assert response.status_code == 408
    assert response.json() == {
        "error": "machine failed to reach desired state, started, currently starting"
    }
    assert clock() - before == pytest.approx(2)


@pytest.mark.parametrize(
    "params",
    [
        {"state": "started", "timeout": "0"},
        {"state": "started", "timeout": "61"},
        {"state": "started", "timeout": "1m"},
        {"state": "running", "timeout": "5"},
    ],
)
def test_wait_rejects_bad_parameters(fake, params):
    machine = created(fake)
    assert fake.get(f"{BASE}/{machine['id']}/wait", params=params).status_code == 400


# -- auth, validation ------------------------------------------------------------------------


def test_wrong_token_gets_flys_401(fake):
    response = fake.get(BASE, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json() == {"error": "Authenticate: token validation error"}
    assert response.headers["fly-request-id"]


def test_macaroon_tokens_must_come_as_flyv1(clock):
    fake = make(clock, token="FlyV1 fm2_abc,fm1r_def")
    assert fake.get(BASE, headers={"Authorization": "Bearer fm2_abc,fm1r_def"}).status_code == 401
    assert fake.get(BASE, headers={"Authorization": "FlyV1 fm2_abc,fm1r_def"}).status_code == 200


@pytest.mark.parametrize("guest", [{"gpu_kind": "a100-pcie-40gb"}, {"gpus": 1}])
def test_gpu_guest_gets_flys_400(fake, guest):
    response = create(
        fake, config=worker_config(guest={"cpu_kind": "performance", "cpus": 1, **guest})
    )
    assert response.status_code == 400
    assert "GPU machines are no longer supported" in response.json()["error"]
    assert fake.get(BASE).json() == []


@pytest.mark.parametrize(
    "config",
    [
        worker_config(image=""),
        {k: v for k, v in worker_config().items() if k != "image"},
        worker_config(guest={"cpu_kind": "performance", "cpus": 1, "memory_mb": 1024}),
        worker_config(guest={"cpu_kind": "performance", "cpus": 1, "memory_mb": 2100}),
        worker_config(guest={"cpu_kind": "performance", "cpus": 2, "memory_mb": 16640}),
        worker_config(guest={"cpu_kind": "performance", "cpus": 3, "memory_mb": 6144}),
        worker_config(region="ams"),
        worker_config(env={"PORT": 8000}),
        worker_config(restart={"policy": "sometimes"}),
    ],
)
def test_create_validates_the_config(fake, config):
    assert create(fake, config=config).status_code == 400


def test_create_accepts_the_performance_memory_range(fake):
    guest = {"cpu_kind": "performance", "cpus": 16, "memory_mb": 32768}
    assert create(fake, config=worker_config(guest=guest)).status_code == 200


def test_stop_body_must_be_an_object(fake):
    machine = created(fake)
    url = f"{BASE}/{machine['id']}/stop"
    assert fake.post(url, json=["SIGTERM"]).status_code == 400
    assert fake.post(url, content=b"{nope", headers=AUTH).status_code == 400
    assert fake.post(url, json={"signal": "SIGNOPE"}).status_code == 400


# -- rate limits -----------------------------------------------------------------------------


def test_create_is_limited_to_burst_3_then_1_per_second(fake, clock):
    assert [create(fake, f"w{i}").status_code for i in range(4)] == [200, 200, 200, 429]
    clock.advance(1)
    assert create(fake, "w5").status_code == 200
    assert create(fake, "w6").status_code == 429


def test_get_is_limited_to_burst_10(fake, clock):
    machine = created(fake)
    codes = [fake.get(f"{BASE}/{machine['id']}").status_code for _ in range(11)]
    assert codes == [200] * 10 + [429]
    assert "retry-after" not in {k.lower() for k in fake.get(f"{BASE}/{machine['id']}").headers}
    clock.advance(0.25)
    assert fake.get(f"{BASE}/{machine['id']}").status_code == 200


def test_limits_are_per_machine(fake):
    a, b = created(fake, "a"), created(fake, "b")
    for _ in range(3):
        assert fake.post(f"{BASE}/{a['id']}/start").status_code == 200
    assert fake.post(f"{BASE}/{a['id']}/start").status_code == 429
    assert fake.post(f"{BASE}/{b['id']}/start").status_code == 200


def test_retry_after_header_when_asked_for(clock):
    fake = make(clock, retry_after=True)
    for i in range(3):
        created(fake, f"w{i}")
    response = create(fake, "w3")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"


# -- faults ----------------------------------------------------------------------------------


def test_capacity_faults_from_construction(clock):
    fake = make(clock, faults=Faults(capacity_409=1, capacity_412=1))
    first, second, third = (create(fake, "w1") for _ in range(3))
    assert first.status_code == 409
    assert first.json() == {
        "error": "aborted: could not reserve resource for machine: insufficient memory available",
        "status": "insufficient_capacity",
    }
    assert second.status_code == 412
    assert third.status_code == 200
    assert len(fake.get(BASE).json()) == 1


def test_faults_through_the_control_endpoint(fake, clock):
    assert fake.post("/_fake/faults", json={"server_errors": 2}).json()["server_errors"] == 2
    assert [fake.get(BASE).status_code for _ in range(3)] == [503, 503, 200]
    assert fake.post("/_fake/faults", json={"bogus": 1}).status_code == 400
    assert fake.get("/_fake/faults").json()["server_errors"] == 0


def test_create_408_still_creates_the_machine(clock):
    fake = make(clock, faults=Faults(create_408=1))
    response = create(fake, "w1")
    assert response.status_code == 408
    assert [m["name"] for m in fake.get(BASE).json()] == ["w1"]


def test_never_start_machine_stays_starting(clock):
    fake = make(clock, faults=Faults(never_start=1))
    machine = created(fake)
    clock.advance(3600)
    assert state_of(fake, machine["id"]) == "starting"
    response = fake.get(f"{BASE}/{machine['id']}/wait", params={"state": "started", "timeout": 5})
    assert response.status_code == 408


def test_machine_that_dies_mid_run(clock):
    fake = make(clock, faults=Faults(die=1, die_after=30))
    machine = created(fake)
    clock.advance(5 + 29)
    assert state_of(fake, machine["id"]) == "started"
    clock.advance(1)
    assert state_of(fake, machine["id"]) == "destroyed"
    exit_event = next(
        e for e in fake.get(f"{BASE}/{machine['id']}").json()["events"] if e["type"] == "exit"
    )
    assert exit_event["request"]["exit_event"]["exit_code"] == 137
    assert exit_event["request"]["exit_event"]["requested_stop"] is False


def test_restart_always_restarts_a_dead_machine(clock):
    fake = make(clock, faults=Faults(die=1, die_after=1))
    config = worker_config(restart={"policy": "always"})
    machine = created(fake, config=config)
    clock.advance(6)
    assert state_of(fake, machine["id"]) == "starting"
    clock.advance(5)
    assert state_of(fake, machine["id"]) == "started"


# -- the launcher hook -----------------------------------------------------------------------


def test_launcher_runs_at_started_with_flys_env(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher)
    machine = created(fake, region="ams")
    clock.advance(4)
    fake.get(BASE)
    assert launcher.handles == []
    clock.advance(1)
    fake.get(BASE)
    (handle,) = launcher.handles
    env = handle.spec.env
    assert env["FLY_MACHINE_ID"] == machine["id"]
    assert env["FLY_REGION"] == "ams"
    assert env["FLY_APP_NAME"] == APP
    assert env["WHISPERFARM_RUN_ID"] == "r1"
    handle.code = 0  # the worker finished its work and exited
    assert state_of(fake, machine["id"]) == "destroyed"


def test_an_unreachable_machine_sees_every_url_in_its_env_on_a_closed_loopback_port(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher, faults=Faults(unreachable=1))
    env = {
        "WHISPERFARM_URL": "http://laptop._peer.internal:8765",
        "HOOK": "https://example.com/v1/x?y=1",
        "WHISPERFARM_TOKEN": "secret",
    }
    cut, fine = (created(fake, name, config=worker_config(env=env)) for name in ("w1", "w2"))
    clock.advance(5)
    fake.get(BASE)
    first, second = launcher.handles
    assert first.spec.machine_id == cut["id"]
    assert first.spec.env["WHISPERFARM_URL"] == "http://127.0.0.1:9"
    assert first.spec.env["HOOK"] == "http://127.0.0.1:9/v1/x?y=1"
    assert first.spec.env["WHISPERFARM_TOKEN"] == "secret"
    assert second.spec.env["WHISPERFARM_URL"] == env["WHISPERFARM_URL"]  # one was asked for
    machines = {m["id"]: m for m in fake.get("/_fake/state").json()["machines"]}
    assert machines[cut["id"]]["unreachable"] and not machines[fine["id"]]["unreachable"]
    assert fake.get("/_fake/faults").json()["unreachable"] == 0
    # The API still shows the config as created: only the machine's network differs.
    assert fake.get(f"{BASE}/{cut['id']}").json()["config"]["env"] == env


def test_an_unreachable_machine_stays_so_when_started_again(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher, faults=Faults(unreachable=1))
    env = {"WHISPERFARM_URL": "http://10.0.0.5:8765"}
    machine = created(fake, config=worker_config(env=env, auto_destroy=False))
    clock.advance(5)
    fake.get(BASE)
    launcher.handles[0].code = 3  # the worker gave up on the coordinator
    assert state_of(fake, machine["id"]) == "stopped"
    assert fake.post(f"{BASE}/{machine['id']}/start").status_code == 200
    clock.advance(5)
    fake.get(BASE)
    assert [h.spec.env["WHISPERFARM_URL"] for h in launcher.handles] == ["http://127.0.0.1:9"] * 2


def test_exit_without_auto_destroy_leaves_it_stopped(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher)
    machine = created(fake, config=worker_config(auto_destroy=False))
    clock.advance(5)
    fake.get(BASE)
    launcher.handles[0].code = 1
    assert state_of(fake, machine["id"]) == "stopped"


def test_stop_signals_then_kills_after_the_timeout(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher)
    machine = created(fake)
    clock.advance(5)
    fake.post(f"{BASE}/{machine['id']}/stop", json={"signal": "SIGTERM", "timeout": "10s"})
    (handle,) = launcher.handles
    assert handle.signals == [signal.SIGTERM]
    clock.advance(9)
    assert state_of(fake, machine["id"]) == "stopping"
    clock.advance(1)
    fake.get(BASE)  # the deadline passes: SIGKILL
    assert handle.signals == [signal.SIGTERM, signal.SIGKILL]
    assert state_of(fake, machine["id"]) == "destroyed"


def test_force_destroy_kills_the_process(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher)
    machine = created(fake)
    clock.advance(5)
    fake.get(BASE)
    fake.delete(f"{BASE}/{machine['id']}", params={"force": "true"})
    assert launcher.handles[0].signals == [signal.SIGKILL]
    assert state_of(fake, machine["id"]) == "destroyed"


# -- MachinesClient against the fake, in process -------------------------------------------


def client_for(fake: TestClient, clock: FakeClock, token: str = TOKEN) -> MachinesClient:
    return MachinesClient(
        APP, token, base_url=BASE_URL, http=in_process(fake), sleep=clock.sleep_sync, clock=clock
    )


def test_client_lifecycle_in_process(fake, clock):
    client = client_for(fake, clock)
    config = build_worker_config(
        image="registry.fly.io/wf-test:v1", size="performance-2x", env={}, run_id="r1",
        machine_name="w1", model="small.en",
    )  # fmt: skip
    machine = client.create(config, name="w1", region="ams")
    assert client.wait(machine.id, "started", timeout=30).state == "started"
    client.stop(machine.id)
    assert client.wait(machine.id, "destroyed", timeout=30).state == "destroyed"
    client.destroy(machine.id)  # already gone: fine
    assert history(fake, machine.id)[-1] == "destroyed"


def test_client_retries_capacity_from_the_fake(clock):
    fake = make(clock, faults=Faults(capacity_409=2))
    client = client_for(fake, clock)
    machine = client.create(worker_config(), name="w1")
    assert machine.name == "w1"
    assert len(clock.slept) == 2
    assert len(fake.get(BASE).json()) == 1


def test_client_create_after_ambiguous_408_makes_one_machine(clock):
    fake = make(clock, faults=Faults(create_408=1))
    client = client_for(fake, clock)
    machine = client.create(worker_config(), name="w-unique")
    machines = fake.get("/_fake/state").json()["machines"]
    assert [m["id"] for m in machines] == [machine.id]
    assert fake.get("/_fake/state").json()["requests"]["create"] == 1


def test_client_rides_out_the_fakes_rate_limit(fake, clock):
    client = client_for(fake, clock)
    names = [client.create(worker_config(), name=f"w{i}").name for i in range(5)]
    assert names == [f"w{i}" for i in range(5)]
    assert fake.get("/_fake/state").json()["requests"]["rate_limited"] >= 1


def test_client_wrong_token_against_the_fake(fake, clock):
    from whisperfarm.errors import FlyAuthError

    with pytest.raises(FlyAuthError):
        client_for(fake, clock, token="fm2_wrong").list()


# -- the one real process --------------------------------------------------------------------


def _read_url(process: subprocess.Popen[str], timeout: float = 20) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line.startswith("FAKEFLY_URL="):
                return line.strip().split("=", 1)[1]
            if not line and process.poll() is not None:
                break
    raise AssertionError(f"fake never printed its URL (exit {process.poll()})")


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_fake_as_a_real_process_drives_a_real_launcher(tmp_path):
    out = tmp_path / "env.json"
    code = (
        "import json, os, time; keys = ('FLY_MACHINE_ID', 'FLY_REGION', 'FLY_APP_NAME', 'OUT');"
        " json.dump({k: os.environ[k] for k in keys}, open(os.environ['OUT'] + '.tmp', 'w'));"
        " os.replace(os.environ['OUT'] + '.tmp', os.environ['OUT']); time.sleep(30)"
    )
    command = [
        sys.executable, "-m", "tests.fakefly", "--port", "0", "--app", APP,
        "--token", "fm2_e2e", "--start-latency", "0.2",
        "--launch-cmd", shlex.join([sys.executable, "-c", code]),
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = _read_url(server)
        with MachinesClient(APP, "fm2_e2e", base_url=url, max_backoff=1.0) as client:
            config = build_worker_config(
                image="registry.fly.io/wf-test:v1", size="performance-1x",
                env={"OUT": str(out)}, run_id="r1", machine_name="w1", model="tiny.en",
            )  # fmt: skip
            machine = client.create(config, name="w1", region="ams")
            assert client.wait(machine.id, "started", timeout=20).state == "started"
            _wait_for(out.exists)
            env = json.loads(out.read_text())
            assert env == {
                "FLY_MACHINE_ID": machine.id, "FLY_REGION": "ams", "FLY_APP_NAME": APP,
                "OUT": str(out),
            }  # fmt: skip
            pid = httpx.get(f"{url}/_fake/state").json()["machines"][0]["pid"]
            os.kill(pid, 0)  # the process is alive

            client.stop(machine.id, timeout="5s")
            assert client.wait(machine.id, "destroyed", timeout=20).state == "destroyed"
            client.destroy(machine.id)

        snapshot = httpx.get(f"{url}/_fake/state").json()
        (record,) = snapshot["machines"]
        assert [h["state"] for h in record["history"]] == [
            "created", "starting", "started", "stopping", "stopped", "destroying", "destroyed",
        ]  # fmt: skip
        assert record["exit_code"] == 128 + signal.SIGTERM
        assert record["running"] is False
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    # uvicorn re-raises the signal once it has shut down cleanly
    assert server.returncode in (0, -signal.SIGTERM)


# -- update, and starting a machine that already exists ----------------------------------------


def update(fake: TestClient, machine_id: str, config: dict[str, Any], **body: Any):
    return fake.post(f"{BASE}/{machine_id}", json={"config": config, **body})


def pool_machine(fake: TestClient, clock: FakeClock, name: str = "p1") -> dict[str, Any]:
    """A machine made ahead of time: created without launching, its image unpacked."""
    machine = created(fake, name, config=worker_config(auto_destroy=False), skip_launch=True)
    clock.advance(5)  # the start latency: the image is unpacked by now
    assert state_of(fake, machine["id"]) == "created"
    return machine


def test_update_replaces_the_config_and_leaves_a_stopped_machine_stopped(clock):
    fake = make(clock, warm_start_latency=1.0)
    machine = pool_machine(fake, clock)
    new = worker_config(auto_destroy=False, env={"WHISPERFARM_TOKEN": "run-2"})
    response = update(fake, machine["id"], new, skip_launch=True)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == machine["id"] and answer["state"] == "created"
    assert answer["config"]["env"] == {"WHISPERFARM_TOKEN": "run-2"}
    assert answer["instance_id"] != machine["instance_id"]  # a new version of the machine
    clock.advance(10)
    assert state_of(fake, machine["id"]) == "created"  # skip_launch: nothing started
    assert history(fake, machine["id"]) == ["created", "updating", "created"]


def test_update_without_skip_launch_starts_it_after_the_warm_start_latency(clock):
    fake = make(clock, warm_start_latency=1.0)
    machine = pool_machine(fake, clock)
    update(fake, machine["id"], worker_config(auto_destroy=False))
    assert state_of(fake, machine["id"]) == "starting"
    clock.advance(1.0)
    assert state_of(fake, machine["id"]) == "started"


def test_update_launches_mode_starts_it_even_with_skip_launch(clock):
    fake = make(clock, warm_start_latency=1.0, update_launches=True)
    machine = pool_machine(fake, clock)
    update(fake, machine["id"], worker_config(auto_destroy=False), skip_launch=True)
    clock.advance(1.0)
    assert state_of(fake, machine["id"]) == "started"


def test_a_stopped_machine_starts_with_the_warm_latency_a_new_one_waits_for_its_image(clock):
    fake = make(clock, warm_start_latency=1.0)
    fresh = created(fake, "fresh", config=worker_config(auto_destroy=False), skip_launch=True)
    clock.advance(2)  # its image is still being unpacked (5 s)
    fake.post(f"{BASE}/{fresh['id']}/start")
    clock.advance(1.0)
    assert state_of(fake, fresh["id"]) == "starting"
    clock.advance(2.0)  # 5 s after its create
    assert state_of(fake, fresh["id"]) == "started"
    fake.post(f"{BASE}/{fresh['id']}/stop", json={})
    assert state_of(fake, fresh["id"]) == "stopped"
    fake.post(f"{BASE}/{fresh['id']}/start")
    clock.advance(0.9)
    assert state_of(fake, fresh["id"]) == "starting"
    clock.advance(0.1)
    assert state_of(fake, fresh["id"]) == "started"


def test_a_new_image_in_an_update_has_to_be_unpacked_again(clock):
    fake = make(clock, warm_start_latency=1.0)
    machine = pool_machine(fake, clock)
    other = worker_config(auto_destroy=False, image="registry.fly.io/wf-test:v2")
    update(fake, machine["id"], other)
    clock.advance(1.0)
    assert state_of(fake, machine["id"]) == "starting"
    clock.advance(4.0)
    assert state_of(fake, machine["id"]) == "started"


@pytest.mark.parametrize("guest", [{"gpu_kind": "a100-pcie-40gb"}, {"gpus": 1}])
def test_update_with_a_gpu_guest_gets_flys_400_and_changes_nothing(clock, guest):
    fake = make(clock)
    machine = pool_machine(fake, clock)
    config = worker_config(guest={"cpu_kind": "performance", "cpus": 1, **guest})
    response = update(fake, machine["id"], config, skip_launch=True)
    assert response.status_code == 400
    assert "GPU machines are no longer supported" in response.json()["error"]
    assert fake.get(f"{BASE}/{machine['id']}").json()["config"] == machine["config"]


def test_update_of_an_unknown_or_destroyed_machine_is_404_and_a_bad_body_400(clock):
    fake = make(clock)
    assert update(fake, "nope", worker_config()).status_code == 404
    machine = pool_machine(fake, clock)
    assert fake.post(f"{BASE}/{machine['id']}", json=[1]).status_code == 400
    assert fake.post(f"{BASE}/{machine['id']}", json={}).status_code == 400  # no config
    fake.delete(f"{BASE}/{machine['id']}", params={"force": "true"})
    assert update(fake, machine["id"], worker_config()).status_code == 404


def test_update_is_limited_per_machine_to_burst_3_then_1_per_second(clock):
    fake = make(clock)
    first = pool_machine(fake, clock, "p1")
    second = pool_machine(fake, clock, "p2")
    config = worker_config(auto_destroy=False)
    codes = [update(fake, first["id"], config, skip_launch=True).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert update(fake, second["id"], config, skip_launch=True).status_code == 200
    clock.advance(1.0)
    assert update(fake, first["id"], config, skip_launch=True).status_code == 200


def test_update_of_a_running_machine_replaces_its_process(clock):
    launcher = FakeLauncher()
    fake = make(clock, launcher=launcher, warm_start_latency=1.0)
    machine = created(fake, config=worker_config(auto_destroy=False))
    clock.advance(5)
    fake.get(BASE)
    (old,) = launcher.handles
    new = worker_config(auto_destroy=False, env={"WHISPERFARM_TOKEN": "run-2"})
    update(fake, machine["id"], new)
    assert old.signals == [signal.SIGKILL]
    clock.advance(1.0)
    fake.get(BASE)
    assert state_of(fake, machine["id"]) == "started"
    assert launcher.handles[-1].spec.env["WHISPERFARM_TOKEN"] == "run-2"
    assert "replacing" in history(fake, machine["id"])


# -- Fly's unkind parts: a lagging List, per-action limits, capacity, failed starts, hosts ----


def ids(listing: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in listing]


def test_list_is_limited_to_burst_3_then_1_per_second_like_every_action(fake, clock):
    assert [fake.get(BASE).status_code for _ in range(4)] == [200, 200, 200, 429]
    clock.advance(1)
    assert [fake.get(BASE).status_code for _ in range(2)] == [200, 429]
    state = fake.get("/_fake/state").json()
    assert state["requests"]["rate_limited"] == 2 and state["rate_limited"] == {"list": 2}


def test_a_lagging_list_misses_new_machines_and_shows_old_states_while_get_is_current(clock):
    fake = make(clock, faults=Faults(list_lag=3.0))
    machine = created(fake)
    assert fake.get(BASE).json() == []  # not propagated to the read side yet
    assert state_of(fake, machine["id"]) == "starting"  # Get is current
    clock.advance(3.0)
    (listed,) = fake.get(BASE).json()
    assert listed["id"] == machine["id"] and listed["state"] == "starting"
    clock.advance(2.0)  # started at 5 s; the list still says starting
    assert state_of(fake, machine["id"]) == "started"
    assert fake.get(BASE).json()[0]["state"] == "starting"
    assert fake.delete(f"{BASE}/{machine['id']}", params={"force": "true"}).status_code == 200
    assert state_of(fake, machine["id"]) == "destroyed"
    clock.advance(1.0)
    assert ids(fake.get(BASE).json()) == [machine["id"]]  # destroyed, still listed
    clock.advance(2.0)
    assert fake.get(BASE).json() == []
    (deleted,) = fake.get(BASE, params={"include_deleted": "true"}).json()
    assert deleted["state"] == "destroyed"


def test_include_deleted_lags_too(clock):
    fake = make(clock, faults=Faults(list_lag=3.0))
    machine = created(fake)
    clock.advance(3.0)
    fake.delete(f"{BASE}/{machine['id']}", params={"force": "true"})
    clock.advance(1.0)
    listing = fake.get(BASE, params={"include_deleted": "true"}).json()
    assert [m["state"] for m in listing] == ["starting"]


def test_a_lagging_list_shows_the_config_as_it_was(clock):
    fake = make(clock, faults=Faults(list_lag=3.0))
    machine = created(fake, skip_launch=True)
    clock.advance(5.0)
    config = worker_config(metadata={"whisperfarm_run": "r2"})
    assert fake.post(f"{BASE}/{machine['id']}", json={"config": config}).status_code == 200
    assert fake.get(BASE, params={"metadata.whisperfarm_run": "r2"}).json() == []
    assert ids(fake.get(BASE, params={"metadata.whisperfarm_run": "r1"}).json()) == [machine["id"]]
    clock.advance(3.0)
    assert ids(fake.get(BASE, params={"metadata.whisperfarm_run": "r2"}).json()) == [machine["id"]]


def test_lag_settable_through_the_control_endpoint(fake, clock):
    assert fake.post("/_fake/faults", json={"list_lag": 2.5}).json()["list_lag"] == 2.5
    created(fake)
    assert fake.get(BASE).json() == []
    clock.advance(2.5)
    assert len(fake.get(BASE).json()) == 1


def test_list_empty_fault_answers_nothing_for_an_app_with_machines(clock):
    fake = make(clock, faults=Faults(list_empty=1))
    machine = created(fake)
    assert fake.get(BASE).json() == []
    assert ids(fake.get(BASE).json()) == [machine["id"]]


def test_capacity_503_carries_the_status_field(clock):
    fake = make(clock, faults=Faults(capacity_503=1))
    response = create(fake)
    assert response.status_code == 503
    assert response.json() == {"error": "out of capacity", "status": "insufficient_capacity"}
    assert create(fake).status_code == 200


def test_a_start_can_fail_with_status_error_in_a_200(clock):
    fake = make(clock, faults=Faults(start_error=1))
    machine = created(fake, skip_launch=True)
    response = fake.post(f"{BASE}/{machine['id']}/start")
    assert response.status_code == 200
    assert response.json()["status"] == "error" and response.json()["message"]
    clock.advance(10.0)
    assert state_of(fake, machine["id"]) == "created"  # nothing started
    assert fake.post(f"{BASE}/{machine['id']}/start").json()["status"] == ""
    clock.advance(10.0)
    assert state_of(fake, machine["id"]) == "started"


@pytest.mark.parametrize("view", ["incomplete", "null", "absent"])
def test_an_unhealthy_host_hides_the_config_and_metadata_filters_miss_it(clock, view):
    fake = make(clock)
    machine = created(fake)
    answer = fake.post(
        f"/_fake/machines/{machine['id']}/host", json={"status": "unreachable", "config": view}
    )
    assert answer.json() == {"ok": True}
    got = fake.get(f"{BASE}/{machine['id']}").json()
    assert got["host_status"] == "unreachable" and got["state"] == "starting"
    if view == "incomplete":
        assert "config" not in got
        assert got["incomplete_config"]["image"] == worker_config()["image"]
        assert "metadata" not in got["incomplete_config"]
    elif view == "null":
        assert got["config"] is None and "incomplete_config" not in got
    else:
        assert "config" not in got and "incomplete_config" not in got
    assert fake.get(BASE, params={"metadata.whisperfarm_run": "r1"}).json() == []
    assert ids(fake.get(BASE).json()) == [machine["id"]]
    # The fake's own record keeps the truth for assertions.
    (mine,) = fake.get("/_fake/state").json()["machines"]
    assert mine["config"]["metadata"] == {"whisperfarm_run": "r1"}
    bad = fake.post(f"/_fake/machines/{machine['id']}/host", json={"status": "x"})
    assert bad.status_code == 400


def test_unhealthy_fault_puts_the_next_machines_on_a_bad_host(clock):
    fake = make(clock, faults=Faults(unhealthy=1))
    sick, well = created(fake, "a"), created(fake, "b")
    assert sick["host_status"] == "unreachable" and "incomplete_config" in sick
    assert well["host_status"] == "ok" and well["config"]["metadata"]


@pytest.mark.parametrize("name", ["version", "instance_id"])
def test_wait_takes_version_and_still_the_deprecated_instance_id(fake, clock, name):
    machine = created(fake)
    clock.advance(5.0)
    params = {"state": "started", "timeout": "5", name: machine["instance_id"]}
    assert fake.get(f"{BASE}/{machine['id']}/wait", params=params).status_code == 200
    assert fake.get("/_fake/state").json()["wait_params"] == {name: 1}


def test_the_fake_served_in_its_own_process_stops_quietly_on_sigint():
    """FakeFlyProcess.close sends SIGINT: the fake ends with exit 0 and no traceback, so a
    benchmark's output (scripts/bench lifecycle) ends with its own lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakefly", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip().split("=", 1)[1]
    assert httpx.get(f"{url}/_fake/state", timeout=10).status_code == 200
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
