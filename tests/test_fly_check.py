"""``whisperfarm machines check`` (whisperfarm/fly/check.py), one check at a time, against
the fake Machines API in-process with a fake clock. A launcher stands in for the worker a
started machine runs: it reaches the coordinator (its claim, as the ledger records it),
or exits with the code the real worker uses, or does nothing (its network is cut off)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.fakefly import Faults, LaunchSpec, create_app
from tests.support.clock import FakeClock
from tests.support.in_process import BASE_URL, in_process
from whisperfarm.fly.check import Check, CheckReport, check
from whisperfarm.fly.client import MachinesClient
from whisperfarm.fly.config import FlyConfig
from whisperfarm.fly.policy import FleetLimits
from whisperfarm.fly.pricing import SIZES
from whisperfarm.fly.reach import ReachLimits
from whisperfarm.fly.store import MachineStore
from whisperfarm.ledger import Ledger, WorkerInfo
from worker.loop import EXIT_MODEL, EXIT_UNREACHABLE

APP = "wf-test"
TOKEN = "fake-token"
RUN = "check-1"
URL = "http://laptop._peer.internal:8765"
SIZE = SIZES["performance-2x"]


class Worker:
    """A started machine's process: ``code`` None runs on, else it exited with it."""

    def __init__(self, spec: LaunchSpec, code: int | None):
        self.spec, self.code = spec, code
        self.pid: int | None = 4242

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, signum: int) -> None:
        self.code = 128 + signum

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Launcher = Callable[[LaunchSpec], Worker]


@pytest.fixture(autouse=True)
def check_run(ledger: Ledger) -> None:
    """The run a check records its machine and its worker's claim under."""
    ledger.start_run(RUN, backend="check", episode_ids=[])


def reaches(ledger: Ledger) -> Launcher:
    """The worker claims from the coordinator (nothing queued: "done") and exits 0."""

    def launch(spec: LaunchSpec) -> Worker:
        assert spec.env["WHISPERFARM_URL"] == URL and spec.env["WHISPERFARM_TOKEN"] == "t0k"
        worker = WorkerInfo(spec.machine_id, kind="fly", machine_id=spec.machine_id)
        ledger.claim([], worker, lease_seconds=60, max_attempts=3)
        return Worker(spec, code=None)

    return launch


def exits(code: int) -> Launcher:
    return lambda spec: Worker(spec, code)


def never_reaches(spec: LaunchSpec) -> Worker:
    return Worker(spec, code=None)


def run(
    ledger: Ledger,
    clock: FakeClock,
    launcher: Launcher,
    *,
    faults: Faults | None = None,
    token: str = TOKEN,
    app: str = APP,
) -> tuple[CheckReport, dict[str, Any]]:
    fake = create_app(
        app=APP,
        token=TOKEN,
        clock=clock,
        sleep=clock.sleep,
        tick_interval=None,
        start_latency=5.0,
        launcher=launcher,
        faults=faults,
    )
    http = in_process(TestClient(fake))
    client = MachinesClient(
        app, token, base_url=BASE_URL, http=http, sleep=clock.advance, clock=clock,
        max_attempts=1,
    )  # fmt: skip
    config = FlyConfig(
        app=app,
        image=f"registry.fly.io/{APP}:v1",
        size=SIZE,
        model="tiny.en",
        advertise_url=URL,
        limits=FleetLimits(1, None, SIZE.usd_per_second, 10.0),
        start_timeout=60.0,
        reach=ReachLimits(timeout=30.0, limit=3, give_up=58.0),
    )
    heard: list[Check] = []
    report = check(
        client, config, ledger, run_id=RUN, token="t0k", report=heard.append, clock=clock,
        sleep=clock.advance,
    )  # fmt: skip
    assert heard == report.checks  # each said as it was decided
    state = fake.state.fly.snapshot()
    http.close()
    return report, state


def verdicts(report: CheckReport) -> list[tuple[str, bool]]:
    return [(c.name, c.ok) for c in report.checks]


def detail(report: CheckReport, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


def test_every_check_passes_when_the_worker_reaches_the_coordinator(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, state = run(ledger, clock, reaches(ledger))
    assert report.ok
    assert verdicts(report) == [(n, True) for n in ("token", "app", "image", "reach", "cleanup")]
    (machine,) = state["machines"]
    assert machine["state"] == "destroyed"
    assert machine["config"]["metadata"]["whisperfarm_run"] == RUN  # reap finds it
    assert machine["config"]["auto_destroy"] is True
    assert machine["config"]["guest"]["cpus"] == SIZE.cpus
    (row,) = MachineStore(ledger).machines(RUN)
    assert row["state"] == "destroyed" and row["id"] == machine["id"]
    assert row["destroyed_at"] is not None
    assert report.cost == pytest.approx(
        (row["destroyed_at"] - row["created_at"]) * SIZE.usd_per_second
    )
    assert 0 < report.cost < 0.01  # about a cent, at most
    assert f"${report.cost:.4f}" in detail(report, "cleanup")
    assert f"reached this coordinator at {URL}" in detail(report, "reach")


def test_a_wrong_token_fails_the_first_check_and_makes_no_machine(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, state = run(ledger, clock, reaches(ledger), token="wrong")
    assert verdicts(report) == [("token", False)]
    assert "fly tokens create deploy" in detail(report, "token")
    assert state["machines"] == [] and MachineStore(ledger).machines(RUN) == []


def test_an_unknown_app_fails_the_app_check(ledger: Ledger, clock: FakeClock) -> None:
    report, state = run(ledger, clock, reaches(ledger), app="no-such-app")
    assert verdicts(report) == [("token", True), ("app", False)]
    assert "fly apps create no-such-app" in detail(report, "app")
    assert state["machines"] == []


def test_a_worker_that_never_reaches_us_fails_the_reach_check_and_the_machine_goes(
    ledger: Ledger, clock: FakeClock
) -> None:
    started = clock.now
    report, state = run(ledger, clock, never_reaches)
    assert verdicts(report)[-2:] == [("reach", False), ("cleanup", True)]
    reach = detail(report, "reach")
    assert f"can't reach this coordinator at {URL} (no claim within 30s)" in reach
    assert "WireGuard" in reach and "--host ::" in reach and "tunnel" in reach
    assert [m["state"] for m in state["machines"]] == ["destroyed"]
    assert clock.now - started < 5 + 30 + 5  # start, the reach timeout, a poll or so
    assert not report.ok


def test_a_worker_that_gave_up_on_us_fails_the_reach_check_at_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, _ = run(ledger, clock, exits(EXIT_UNREACHABLE))
    assert verdicts(report)[-2:] == [("reach", False), ("cleanup", True)]
    assert "(its worker gave up on it)" in detail(report, "reach")


def test_a_process_that_exits_otherwise_points_at_the_image(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, _ = run(ledger, clock, exits(EXIT_MODEL))
    reach = detail(report, "reach")
    assert f"exited (code {EXIT_MODEL})" in reach and "worker image" in reach
    assert "fly logs" in reach


def test_a_machine_that_never_starts_fails_the_image_check_after_the_start_timeout(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, state = run(ledger, clock, reaches(ledger), faults=Faults(never_start=1))
    assert verdicts(report)[-2:] == [("image", False), ("cleanup", True)]
    assert "still starting after 60s" in detail(report, "image")
    assert [m["state"] for m in state["machines"]] == ["destroyed"]


def test_no_capacity_fails_the_image_check_without_a_machine(
    ledger: Ledger, clock: FakeClock
) -> None:
    report, state = run(ledger, clock, reaches(ledger), faults=Faults(capacity_412=10))
    assert verdicts(report) == [("token", True), ("app", True), ("image", False)]
    assert "capacity" in detail(report, "image")
    assert state["machines"] == []
