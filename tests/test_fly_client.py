"""MachinesClient, build_worker_config and pricing against respx-mocked Fly answers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from tests.support.clock import FakeClock
from whisperfarm.errors import (
    FlyAuthError,
    FlyCapacityError,
    FlyError,
    FlyGPUUnsupported,
    FlyStartFailed,
    FlyUnavailable,
    UsageError,
)
from whisperfarm.fly.client import Machine, MachinesClient, auth_header, build_worker_config
from whisperfarm.fly.pricing import (
    SIZES,
    cost,
    price_table,
    size_named,
)

APP = "wf-test"
BASE = f"https://api.machines.dev/v1/apps/{APP}/machines"
CAPACITY_409 = {
    "error": "aborted: could not reserve resource for machine: insufficient memory available",
    "status": "insufficient_capacity",
}


def machine_json(machine_id: str = "m1", name: str = "w1", state: str = "started", **extra):
    body = {
        "id": machine_id,
        "name": name,
        "state": state,
        "region": "ord",
        "instance_id": "01INSTANCE",
        "private_ip": "fdaa::2",
        "config": {"image": "registry.fly.io/wf:v1", "metadata": {"whisperfarm_run": "r1"}},
        "image_ref": {"registry": "registry.fly.io"},
        "created_at": "2026-11-21T00:00:00Z",
        "updated_at": "2026-11-21T00:00:01Z",
        "events": [],
    }
    return body | extra


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float], clock: FakeClock) -> Iterator[MachinesClient]:
    with MachinesClient(APP, "fm2_secret", sleep=sleeps.append, clock=clock, max_attempts=4) as c:
        yield c


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "header"),
    [
        ("FlyV1 fm2_abc", "FlyV1 fm2_abc"),
        ("fm2_abc", "FlyV1 fm2_abc"),
        ("FlyV1 fm2_abc,fm1r_def", "FlyV1 fm2_abc,fm1r_def"),
        ("fm1a_x, fm2_y", "FlyV1 fm1a_x,fm2_y"),
        ("Bearer fm1r_z", "FlyV1 fm1r_z"),
        ("personal-access-token", "Bearer personal-access-token"),
        ("Bearer personal-access-token", "Bearer personal-access-token"),
        ("  FlyV1 abc  ", "Bearer abc"),
    ],
)
def test_auth_header_follows_flyctls_rules(token: str, header: str) -> None:
    assert auth_header(token) == header


@pytest.mark.parametrize("token", ["", "   ", "Bearer ", "FlyV1 "])
def test_auth_header_refuses_an_empty_token(token: str) -> None:
    with pytest.raises(FlyAuthError, match="FLY_API_TOKEN"):
        auth_header(token)


def test_requests_carry_the_auth_header(client: MachinesClient, respx_mock: respx.MockRouter):
    route = respx_mock.get(f"{BASE}/m1").respond(json=machine_json())
    client.get("m1")
    assert route.calls.last.request.headers["authorization"] == "FlyV1 fm2_secret"


def test_401_is_an_auth_error_and_not_retried(client, respx_mock, sleeps):
    route = respx_mock.get(f"{BASE}/m1").respond(
        401,
        json={"error": "Authenticate: token validation error"},
        headers={"fly-request-id": "req-401"},
    )
    with pytest.raises(FlyAuthError) as info:
        client.get("m1")
    message = str(info.value)
    assert "set FLY_API_TOKEN" in message
    assert "fly tokens create deploy" in message
    assert "req-401" in message
    assert route.call_count == 1
    assert sleeps == []


def test_a_missing_app_names_the_fix(client, respx_mock, sleeps):
    route = respx_mock.get(BASE).respond(404, json={"error": f"app not found: {APP}"})
    with pytest.raises(FlyError) as info:
        client.list()
    assert str(info.value) == (
        f"Fly app {APP} not found: create it with 'fly apps create {APP}', or set FLY_APP / --app"
    )
    assert info.value.status == 404 and route.call_count == 1 and sleeps == []


def test_timeouts_are_on_by_default() -> None:
    with MachinesClient(APP, "t") as c:
        timeout = c._http.timeout
    assert timeout.read is not None and timeout.connect is not None


# -- the calls -------------------------------------------------------------------------------


def test_create_sends_name_region_and_config(client, respx_mock):
    route = respx_mock.post(BASE).respond(json=machine_json(state="created"))
    config = {"image": "registry.fly.io/wf:v1", "metadata": {"whisperfarm_run": "r1"}}
    machine = client.create(config, name="w1", region="ams")
    sent = json.loads(route.calls.last.request.content)
    assert sent == {"name": "w1", "region": "ams", "config": config}
    assert isinstance(machine, Machine)
    assert (machine.id, machine.state, machine.metadata) == (
        "m1",
        "created",
        {"whisperfarm_run": "r1"},
    )


def test_create_without_region_leaves_it_out(client, respx_mock):
    route = respx_mock.post(BASE).respond(json=machine_json())
    client.create({"image": "x"}, name="w1")
    assert "region" not in json.loads(route.calls.last.request.content)


def test_get_parses_the_machine(client, respx_mock):
    respx_mock.get(f"{BASE}/m9").respond(json=machine_json("m9", state="stopped"))
    machine = client.get("m9")
    assert (machine.id, machine.state, machine.instance_id) == ("m9", "stopped", "01INSTANCE")
    assert machine.private_ip == "fdaa::2"


def test_list_passes_metadata_filters_and_include_deleted(client, respx_mock):
    route = respx_mock.get(BASE).respond(json=[machine_json("a"), machine_json("b")])
    machines = client.list(metadata={"whisperfarm_run": "r1"}, include_deleted=True)
    params = route.calls.last.request.url.params
    assert params["metadata.whisperfarm_run"] == "r1"
    assert params["include_deleted"] == "true"
    assert [m.id for m in machines] == ["a", "b"]


def test_list_without_options_sends_no_params(client, respx_mock):
    route = respx_mock.get(BASE).respond(json=[])
    assert client.list() == []
    assert route.calls.last.request.url.query == b""


def test_start_posts_without_a_body(client, respx_mock):
    route = respx_mock.post(f"{BASE}/m1/start").respond(json={"previous_state": "stopped"})
    client.start("m1")
    assert route.call_count == 1 and route.calls.last.request.content == b""


def test_stop_sends_signal_and_timeout_as_an_object(client, respx_mock):
    route = respx_mock.post(f"{BASE}/m1/stop").respond(json={"ok": True})
    client.stop("m1")
    client.stop("m1", signal="SIGINT", timeout="5s")
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert bodies == [
        {"signal": "SIGTERM", "timeout": "30s"},
        {"signal": "SIGINT", "timeout": "5s"},
    ]


def test_destroy_forces_by_default(client, respx_mock):
    route = respx_mock.delete(f"{BASE}/m1").respond(json={"ok": True})
    client.destroy("m1")
    client.destroy("m1", force=False)
    assert route.calls[0].request.url.params["force"] == "true"
    assert "force" not in route.calls[1].request.url.params


def test_destroy_of_a_machine_already_gone_is_fine(client, respx_mock, sleeps):
    route = respx_mock.delete(f"{BASE}/m1").respond(404, json={"error": "machine not found"})
    client.destroy("m1")
    assert route.call_count == 1 and sleeps == []


def test_other_4xx_is_a_plain_fly_error_with_the_apis_text(client, respx_mock, sleeps):
    respx_mock.post(f"{BASE}/m1/start").respond(
        412,
        json={"error": "unable to start machine from current state: 'destroying'"},
        headers={"fly-request-id": "req-x"},
    )
    with pytest.raises(FlyError) as info:
        client.start("m1")
    assert type(info.value) is FlyError
    assert "unable to start machine from current state" in str(info.value)
    assert "req-x" in str(info.value)
    assert info.value.status == 412
    assert sleeps == []


def test_a_non_capacity_409_is_not_retried(client, respx_mock, sleeps):
    route = respx_mock.post(BASE).respond(409, json={"error": "lease currently held"})
    with pytest.raises(FlyError, match="lease currently held") as info:
        client.create({"image": "x"}, name="w1")
    assert not isinstance(info.value, FlyCapacityError)
    assert route.call_count == 1 and sleeps == []


# -- GPUs --------------------------------------------------------------------------------------


def test_gpu_400_from_fly_is_gpu_unsupported(client, respx_mock):
    route = respx_mock.post(BASE).respond(
        400,
        json={
            "error": "failed to launch VM: GPU machines are no longer supported: "
            "config.guest.gpu_kind and config.guest.gpus must be unset"
        },
    )
    with pytest.raises(FlyGPUUnsupported) as info:
        client.create({"image": "x"}, name="w1")
    assert "Aug 2026" in str(info.value) and "performance" in str(info.value)
    assert route.call_count == 1


@pytest.mark.parametrize("guest", [{"gpu_kind": "a100-pcie-40gb"}, {"gpus": 1}])
def test_gpu_config_is_refused_before_any_request(client, respx_mock, guest):
    with pytest.raises(FlyGPUUnsupported):
        client.create({"image": "x", "guest": guest}, name="w1")
    assert respx_mock.calls.call_count == 0


# -- retries -------------------------------------------------------------------------------


def test_capacity_errors_are_retried_then_succeed(client, respx_mock, sleeps):
    route = respx_mock.post(BASE).mock(
        side_effect=[
            httpx.Response(409, json=CAPACITY_409),
            httpx.Response(412, json={"error": "insufficient resources"}),
            httpx.Response(200, json=machine_json()),
        ]
    )
    listing = respx_mock.get(BASE).respond(json=[])
    assert client.create({"image": "x"}, name="w1").id == "m1"
    assert route.call_count == 3
    assert len(sleeps) == 2
    assert listing.call_count == 0  # a capacity refusal is not ambiguous


def test_capacity_exhausted_raises_capacity_error(client, respx_mock, sleeps):
    route = respx_mock.post(BASE).respond(409, json=CAPACITY_409, headers={"fly-request-id": "r9"})
    with pytest.raises(FlyCapacityError) as info:
        client.create({"image": "x"}, name="w1", region="ams")
    message = str(info.value)
    assert "another region" in message and "ams" in message and "r9" in message
    assert route.call_count == 4
    assert len(sleeps) == 3


def test_429_honours_retry_after(client, respx_mock, sleeps):
    respx_mock.get(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(429, json={"error": "rate limit"}, headers={"Retry-After": "7"}),
            httpx.Response(200, json=machine_json()),
        ]
    )
    assert client.get("m1").id == "m1"
    assert sleeps == [7.0]


def test_429_without_retry_after_backs_off_with_jitter(client, respx_mock, sleeps):
    respx_mock.get(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(429, json={"error": "rate limit"}),
            httpx.Response(429, json={"error": "rate limit"}),
            httpx.Response(200, json=machine_json()),
        ]
    )
    client.get("m1")
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.5  # initial 0.5 s plus up to 1 s of jitter
    assert 1.0 <= sleeps[1] <= 2.0


def test_backoff_is_capped_and_exhaustion_says_what_to_do(respx_mock, sleeps):
    respx_mock.get(f"{BASE}/m1").respond(
        503, json={"error": "upstream down"}, headers={"fly-request-id": "req-503"}
    )
    c = MachinesClient(APP, "t", sleep=sleeps.append, max_attempts=8, max_backoff=2.0)
    with pytest.raises(FlyUnavailable) as info:
        c.get("m1")
    message = str(info.value)
    assert "after 8 attempts" in message and "status.flyio.net" in message
    assert "upstream down" in message and "req-503" in message
    assert len(sleeps) == 7 and max(sleeps) <= 2.0
    assert sleeps[-1] == 2.0


def test_retry_after_is_capped_at_max_backoff(client, respx_mock, sleeps):
    respx_mock.get(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3600"}),
            httpx.Response(200, json=machine_json()),
        ]
    )
    client.get("m1")
    assert sleeps == [30.0]


def test_5xx_is_retried(client, respx_mock, sleeps):
    route = respx_mock.post(f"{BASE}/m1/stop").mock(
        side_effect=[
            httpx.Response(502, text="bad gateway"),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    client.stop("m1")
    assert route.call_count == 2 and len(sleeps) == 1


def test_transport_errors_are_retried(client, respx_mock, sleeps):
    route = respx_mock.get(f"{BASE}/m1").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=machine_json())]
    )
    assert client.get("m1").id == "m1"
    assert route.call_count == 2 and len(sleeps) == 1


# -- create must never make two machines -----------------------------------------------------


def test_create_after_ambiguous_408_returns_the_machine_it_made(client, respx_mock):
    create = respx_mock.post(BASE).respond(408, json={"error": "deadline_exceeded"})
    listing = respx_mock.get(BASE).respond(
        json=[machine_json("other", name="w0"), machine_json("m7", name="w1", state="starting")]
    )
    machine = client.create({"image": "x"}, name="w1")
    assert machine.id == "m7"
    assert create.call_count == 1
    assert listing.call_count == 1


def test_create_after_ambiguous_timeout_retries_when_nothing_was_made(client, respx_mock, sleeps):
    create = respx_mock.post(BASE).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=machine_json("m2"))]
    )
    listing = respx_mock.get(BASE).respond(json=[machine_json("m0", name="someone-else")])
    assert client.create({"image": "x"}, name="w1").id == "m2"
    assert create.call_count == 2 and listing.call_count == 1


def test_create_exhausted_on_ambiguity_checks_once_more(client, respx_mock):
    create = respx_mock.post(BASE).respond(503, json={"error": "busy"})
    listing = respx_mock.get(BASE).mock(
        side_effect=[httpx.Response(200, json=[])] * 3
        + [httpx.Response(200, json=[machine_json("late", name="w1")])]
    )
    assert client.create({"image": "x"}, name="w1").id == "late"
    assert create.call_count == 4 and listing.call_count == 4


def test_create_ignores_a_destroyed_namesake(client, respx_mock):
    respx_mock.post(BASE).mock(
        side_effect=[httpx.Response(500), httpx.Response(200, json=machine_json("new"))]
    )
    respx_mock.get(BASE).respond(json=[machine_json("old", name="w1", state="destroyed")])
    assert client.create({"image": "x"}, name="w1").id == "new"


# -- wait ------------------------------------------------------------------------------------


def test_wait_loops_on_408_in_chunks_of_at_most_60s(
    client: MachinesClient, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    timeouts: list[str] = []
    answers = iter([408, 408, 200])

    def wait_answer(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.url.params["timeout"])
        status = next(answers)
        clock.now += float(request.url.params["timeout"]) if status == 408 else 1
        body = {"error": "machine failed to reach desired state, started, currently starting"}
        return httpx.Response(status, json=body if status == 408 else {"ok": True})

    respx_mock.get(f"{BASE}/m1/wait").mock(side_effect=wait_answer)
    respx_mock.get(f"{BASE}/m1").respond(json=machine_json())
    machine = client.wait("m1", "started", timeout=150)
    assert machine.state == "started"
    assert timeouts == ["60", "60", "30"]


def test_wait_gives_up_after_the_overall_timeout(
    client: MachinesClient, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    def always_408(request: httpx.Request) -> httpx.Response:
        clock.now += float(request.url.params["timeout"])
        return httpx.Response(
            408, json={"error": "machine failed to reach desired state, started, currently stopped"}
        )

    route = respx_mock.get(f"{BASE}/m1/wait").mock(side_effect=always_408)
    with pytest.raises(FlyUnavailable) as info:
        client.wait("m1", "started", timeout=90)
    message = str(info.value)
    assert "m1" in message and "'started'" in message and "currently stopped" in message
    assert route.call_count == 2


def test_wait_for_stopped_sends_the_version_not_the_deprecated_instance_id(client, respx_mock):
    respx_mock.get(f"{BASE}/m1").respond(json=machine_json(state="stopped"))
    route = respx_mock.get(f"{BASE}/m1/wait").respond(json={"ok": True})
    assert client.wait("m1", "stopped", timeout=10).state == "stopped"
    params = route.calls.last.request.url.params
    assert params["version"] == "01INSTANCE" and params["state"] == "stopped"
    assert "instance_id" not in params
    assert params["timeout"] == "10"
    client.wait("m1", "stopped", timeout=10, version="01OTHER")
    assert route.calls.last.request.url.params["version"] == "01OTHER"


# -- build_worker_config ----------------------------------------------------------------------


def test_build_worker_config_contents() -> None:
    config = build_worker_config(
        image="registry.fly.io/whisperfarm-workers:v1",
        size="performance-4x",
        env={"WHISPERFARM_COORDINATOR": "http://laptop._peer.internal:8000"},
        run_id="run-42",
        machine_name="wf-run-42-3",
        model="small.en",
    )
    assert config["image"] == "registry.fly.io/whisperfarm-workers:v1"
    assert config["guest"] == {"cpu_kind": "performance", "cpus": 4, "memory_mb": 8192}
    assert config["env"] == {
        "WHISPERFARM_COORDINATOR": "http://laptop._peer.internal:8000",
        "WHISPERFARM_MODEL": "small.en",
    }
    assert config["restart"] == {"policy": "no"}
    assert config["auto_destroy"] is True
    assert config["metadata"] == {
        "whisperfarm_run": "run-42",
        "whisperfarm_machine": "wf-run-42-3",
        "managed_by": "whisperfarm",
    }
    assert config["init"] == {"cmd": ["python", "-m", "worker"]}
    assert "region" not in config


def test_build_worker_config_keeps_a_model_set_in_env() -> None:
    config = build_worker_config(
        image="i", size=SIZES["performance-1x"], env={"WHISPERFARM_MODEL": "tiny.en"},
        run_id="r", machine_name="m", model="small.en",
    )  # fmt: skip
    assert config["env"]["WHISPERFARM_MODEL"] == "tiny.en"
    assert config["guest"]["memory_mb"] == 2048


@pytest.mark.parametrize("gpu", [{"gpu_kind": "l40s"}, {"gpus": 1}])
def test_build_worker_config_refuses_gpus(gpu) -> None:
    with pytest.raises(FlyGPUUnsupported, match="performance"):
        build_worker_config(
            image="i", size="performance-2x", env={}, run_id="r", machine_name="m",
            model="small.en", **gpu,
        )  # fmt: skip


def test_build_worker_config_refuses_non_string_env() -> None:
    with pytest.raises(TypeError, match="PORT"):
        build_worker_config(
            # An untyped caller's int: the check at run time is what this test is about.
            image="i", size="performance-2x", env={"PORT": 8000},  # type: ignore[dict-item]
            run_id="r",
            machine_name="m", model="small.en",
        )  # fmt: skip


# -- pricing ---------------------------------------------------------------------------------


def test_price_table_matches_the_doc() -> None:
    expected = {
        "performance-1x": (1, 2048, 0.0000120),
        "performance-2x": (2, 4096, 0.0000239),
        "performance-4x": (4, 8192, 0.0000478),
        "performance-8x": (8, 16384, 0.0000957),
        "performance-16x": (16, 32768, 0.0001914),
    }
    assert {n: (s.cpus, s.memory_mb, s.usd_per_second) for n, s in SIZES.items()} == expected


def test_size_named_and_cost() -> None:
    size = size_named("performance-2x")
    assert size.cpus == 2
    assert cost(size, 3600) == pytest.approx(0.08604)
    assert cost("performance-8x", 10) == pytest.approx(0.000957)
    assert size.usd_per_hour == pytest.approx(0.08604)


def test_unknown_sizes_name_the_valid_ones() -> None:
    with pytest.raises(UsageError) as info:
        size_named("shared-cpu-2x")
    assert "Shared-CPU sizes are not supported" in str(info.value)
    assert "performance-1x" in str(info.value) and "performance-16x" in str(info.value)
    with pytest.raises(UsageError, match="Unknown Fly machine size 'huge'"):
        size_named("huge")


def test_gpu_size_names_are_gpu_errors() -> None:
    with pytest.raises(FlyGPUUnsupported):
        size_named("a100-40gb")


def test_prices_can_be_overridden() -> None:
    prices = {"performance-16x": 0.0002}
    assert size_named("performance-16x", prices=prices).usd_per_second == 0.0002
    assert cost("performance-16x", 100, prices=prices) == pytest.approx(0.02)
    assert cost(SIZES["performance-16x"], 100, prices=prices) == pytest.approx(0.02)
    assert price_table(prices)["performance-16x"].usd_per_second == 0.0002
    assert price_table(prices)["performance-1x"].usd_per_second == 0.0000120
    with pytest.raises(UsageError, match="unknown size"):
        price_table({"gpu-huge": 1.0})
    with pytest.raises(UsageError, match="negative"):
        cost("performance-1x", 1, prices={"performance-1x": -1})


def test_capacity_outside_create_is_reported_not_retried(client, respx_mock, sleeps):
    route = respx_mock.post(f"{BASE}/m1/start").respond(
        412,
        json={
            "error": "insufficient resources to start machine",
            "status": "insufficient_capacity",
        },
    )
    with pytest.raises(FlyCapacityError, match="another region"):
        client.start("m1")
    assert route.call_count == 1 and sleeps == []


# -- Fly's real errors: capacity by the status field, failed starts, unhealthy hosts ---------

CAPACITY_503 = {"error": "out of capacity", "status": "insufficient_capacity"}


def test_a_503_with_the_capacity_status_is_capacity_not_an_outage(client, respx_mock, sleeps):
    route = respx_mock.post(BASE).respond(503, json=CAPACITY_503)
    listing = respx_mock.get(BASE).respond(json=[])
    with pytest.raises(FlyCapacityError, match="another region"):
        client.create({"image": "x"}, name="w1")
    assert route.call_count == 4 and len(sleeps) == 3
    assert listing.call_count == 0  # a capacity refusal made nothing: no lookup by name


def test_a_503_capacity_then_success_makes_one_machine(client, respx_mock, sleeps):
    route = respx_mock.post(BASE).mock(
        side_effect=[
            httpx.Response(503, json=CAPACITY_503),
            httpx.Response(200, json=machine_json()),
        ]
    )
    assert client.create({"image": "x"}, name="w1").id == "m1"
    assert route.call_count == 2


@pytest.mark.parametrize("code", [409, 412, 503])
def test_capacity_is_decided_by_the_status_field_whatever_the_code(client, respx_mock, code):
    respx_mock.post(f"{BASE}/m1/start").respond(code, json=CAPACITY_503)
    with pytest.raises(FlyCapacityError):
        client.start("m1")


def test_words_alone_do_not_make_a_capacity_error(client, respx_mock, sleeps):
    respx_mock.post(f"{BASE}/m1/start").respond(
        409, json={"error": "insufficient permissions to start machine"}
    )
    with pytest.raises(FlyError) as info:
        client.start("m1")
    assert not isinstance(info.value, FlyCapacityError)


def test_a_start_answered_200_with_status_error_is_a_failed_start(client, respx_mock):
    respx_mock.post(f"{BASE}/m1/start").respond(
        json={"message": "failed to start VM: no room on host", "status": "error"},
        headers={"fly-request-id": "r7"},
    )
    with pytest.raises(FlyStartFailed) as info:
        client.start("m1")
    message = str(info.value)
    assert "could not start machine m1" in message and "no room on host" in message
    assert "r7" in message


def test_a_start_answered_200_otherwise_is_a_start(client, respx_mock):
    respx_mock.post(f"{BASE}/m1/start").respond(
        json={"message": "", "status": "", "previous_state": "stopped"}
    )
    client.start("m1")


@pytest.mark.parametrize(
    "shape",
    [
        {"config": None},
        {"config": None, "incomplete_config": {"image": "registry.fly.io/wf:v1"}},
        {"incomplete_config": {"image": "registry.fly.io/wf:v1"}},
        {},
    ],
    ids=["null", "null-and-incomplete", "incomplete-only", "absent"],
)
def test_a_machine_on_an_unhealthy_host_parses_with_its_metadata_unknown(respx_mock, client, shape):
    body = machine_json(host_status="unreachable")
    del body["config"]
    respx_mock.get(f"{BASE}/m1").respond(json=body | shape)
    machine = client.get("m1")
    assert machine.state == "started" and machine.host_status == "unreachable"
    assert machine.metadata_known is False and machine.metadata == {}
    assert machine.config == (shape.get("incomplete_config") or {})


def test_a_config_sent_from_an_unhealthy_host_is_not_believed_about_metadata(respx_mock, client):
    """An empty or partial config from a host that is not ok proves no machine is not ours:
    reap would destroy a live run's machine, the fleet would stop counting it."""
    body = machine_json(host_status="unreachable") | {"config": {}}
    respx_mock.get(f"{BASE}/m1").respond(json=body)
    machine = client.get("m1")
    assert machine.metadata_known is False


def test_a_healthy_machine_has_its_metadata_known(respx_mock, client):
    respx_mock.get(BASE).respond(json=[machine_json()])
    (machine,) = client.list()
    assert machine.metadata_known and machine.metadata == {"whisperfarm_run": "r1"}
    assert machine.host_status == "ok"


def test_find_is_none_only_when_fly_says_no_such_machine(client, respx_mock):
    route = respx_mock.get(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(200, json=machine_json()),
            httpx.Response(404, json={"error": "machine not found"}),
            httpx.Response(404, json={"error": "app not found: wf-test"}),
        ]
    )
    found = client.find("m1")
    assert found is not None and found.state == "started"
    assert client.find("m1") is None
    with pytest.raises(FlyError, match="fly apps create"):
        client.find("m1")
    assert route.call_count == 3


def test_wait_for_destroyed_tolerates_the_machine_being_gone(client, respx_mock):
    respx_mock.get(f"{BASE}/m1/wait").respond(json={"ok": True})
    respx_mock.get(f"{BASE}/m1").respond(404, json={"error": "machine not found"})
    machine = client.wait("m1", "destroyed", timeout=10)
    assert (machine.id, machine.state) == ("m1", "destroyed")


def test_wait_for_started_on_a_missing_machine_is_an_error(client, respx_mock):
    respx_mock.get(f"{BASE}/m1/wait").respond(404, json={"error": "machine not found"})
    with pytest.raises(FlyError, match="machine not found"):
        client.wait("m1", "started", timeout=10)


# -- update (POST …/{id}: Fly's public docs, not our API-facts page) -------------------------


def test_create_with_skip_launch_says_so_and_only_then(client, respx_mock):
    route = respx_mock.post(BASE).respond(json=machine_json(state="created"))
    client.create({"image": "x"}, name="p1", skip_launch=True)
    client.create({"image": "x"}, name="p2")
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert bodies[0]["skip_launch"] is True
    assert "skip_launch" not in bodies[1]


def test_update_posts_the_config_with_skip_launch_and_returns_the_machine(client, respx_mock):
    config = {"image": "registry.fly.io/wf:v1", "env": {"WHISPERFARM_TOKEN": "t"}}
    route = respx_mock.post(f"{BASE}/m1").respond(json=machine_json(state="stopped"))
    machine = client.update("m1", config)
    assert json.loads(route.calls.last.request.content) == {"config": config, "skip_launch": True}
    assert (machine.id, machine.state) == ("m1", "stopped")
    client.update("m1", config, skip_launch=False)
    assert json.loads(route.calls.last.request.content)["skip_launch"] is False


@pytest.mark.parametrize("status", [429, 500, 503, 408])
def test_update_retries_429_and_5xx_then_succeeds(client, respx_mock, sleeps, status):
    route = respx_mock.post(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(status, json={"error": "try again"}),
            httpx.Response(status, json={"error": "try again"}),
            httpx.Response(200, json=machine_json(state="stopped")),
        ]
    )
    assert client.update("m1", {"image": "x"}).state == "stopped"
    assert route.call_count == 3 and len(sleeps) == 2


def test_update_429_honours_retry_after(client, respx_mock, sleeps):
    respx_mock.post(f"{BASE}/m1").mock(
        side_effect=[
            httpx.Response(429, json={"error": "rate limit"}, headers={"Retry-After": "2"}),
            httpx.Response(200, json=machine_json(state="stopped")),
        ]
    )
    client.update("m1", {"image": "x"})
    assert sleeps == [2.0]


def test_update_exhausted_is_fly_unavailable_naming_the_machine(client, respx_mock, sleeps):
    route = respx_mock.post(f"{BASE}/m1").respond(429, json={"error": "rate limit exceeded"})
    with pytest.raises(FlyUnavailable, match="update machine m1") as info:
        client.update("m1", {"image": "x"})
    assert "rate limit exceeded" in str(info.value)
    assert route.call_count == 4 and len(sleeps) == 3


def test_update_of_an_unknown_machine_is_a_fly_error_not_retried(client, respx_mock, sleeps):
    route = respx_mock.post(f"{BASE}/gone").respond(404, json={"error": "machine not found"})
    with pytest.raises(FlyError, match="machine not found") as info:
        client.update("gone", {"image": "x"})
    assert type(info.value) is FlyError and info.value.status == 404
    assert route.call_count == 1 and sleeps == []


@pytest.mark.parametrize("guest", [{"gpu_kind": "l40s"}, {"gpus": 2}])
def test_update_refuses_a_gpu_config_before_any_request(client, respx_mock, guest):
    with pytest.raises(FlyGPUUnsupported, match="performance"):
        client.update("m1", {"image": "x", "guest": {"cpu_kind": "performance", **guest}})
    assert respx_mock.calls.call_count == 0


def test_update_gpu_400_from_fly_is_gpu_unsupported(client, respx_mock, sleeps):
    route = respx_mock.post(f"{BASE}/m1").respond(
        400, json={"error": "GPU machines are no longer supported: config.guest.gpus"}
    )
    with pytest.raises(FlyGPUUnsupported):
        client.update("m1", {"image": "x"})
    assert route.call_count == 1 and sleeps == []
