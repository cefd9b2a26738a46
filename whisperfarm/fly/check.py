"""``whisperfarm machines check``: will a Fly run work from here? In about a minute, for
about a cent, one check at a time, stopping at the first that fails:

    token    Fly accepts FLY_API_TOKEN (a list of the app's machines)
    app      the app exists
    image    one worker machine, made as a run makes them, reaches ``started``
    reach    its worker claims from this coordinator at the advertised URL within the
             reach timeout; the coordinator serves no episode, so the claim answers "done"
             and the worker exits
    cleanup  the machine is destroyed; what it cost

The check is recorded as a run (backend ``check``) with its machine, so ``whisperfarm
cost`` counts it and ``whisperfarm machines reap`` finds the machine if this process dies.
:func:`run_check` serves the coordinator and runs :func:`check`, which only needs a
client, a ledger and a clock: the worker's claim is the ledger's ``workers`` row.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.errors import FlyAuthError, FlyCapacityError, FlyError
from whisperfarm.fly.client import Machine, MachinesClient, build_worker_config
from whisperfarm.fly.config import FlyConfig
from whisperfarm.fly.store import MachineStore
from whisperfarm.interrupts import held
from whisperfarm.ledger import Ledger
from whisperfarm.money import machine_cost, machine_seconds
from whisperfarm.plan import new_run_id
from whisperfarm.server import BackgroundServer, bind
from whisperfarm.settings import Settings
from whisperfarm.states import MACHINE_ENDED, MachineState, RunState
from worker.loop import EXIT_UNREACHABLE  # the worker gave up on the coordinator

DEPLOY = "fly deploy --build-only --push --image-label latest"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    checks: list[Check] = field(default_factory=list)
    cost: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


class _Failed(Exception):
    """A check failed; the report says how."""


class _Verdicts:
    def __init__(self, result: CheckReport, report: Callable[[Check], None]):
        self.result, self.report = result, report

    def ok(self, name: str, detail: str) -> None:
        self.result.checks.append(Check(name, True, detail))
        self.report(self.result.checks[-1])

    def fail(self, name: str, detail: str) -> NoReturn:
        self.result.checks.append(Check(name, False, detail))
        self.report(self.result.checks[-1])
        raise _Failed


def run_check(
    settings: Settings,
    client: MachinesClient,
    config: FlyConfig,
    *,
    report: Callable[[Check], None] = lambda _: None,
) -> CheckReport:
    """Serve a coordinator with nothing to do on the settings' host and port, record the
    check as a run, and run :func:`check` against it."""
    run_id = new_run_id("check-")
    ledger = Ledger(settings.ledger_path)
    ledger.start_run(run_id, backend="check", episode_ids=[], pid=os.getpid())
    result = CheckReport()
    try:
        with probe_coordinator(settings) as token:
            result = check(client, config, ledger, run_id=run_id, token=token, report=report)
    finally:
        state = RunState.DONE if result.ok else RunState.FAILED
        ledger.end_run(run_id, state, spent=MachineStore(ledger).spend(run_id))
        ledger.close()
    return result


def check(
    client: MachinesClient,
    config: FlyConfig,
    ledger: Ledger,
    *,
    run_id: str,
    token: str,
    report: Callable[[Check], None] = lambda _: None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 1.0,
) -> CheckReport:
    """Run the checks against a coordinator already serving ``token`` at the config's
    advertised URL; ``report`` hears each as it is decided."""
    result = CheckReport()
    verdicts = _Verdicts(result, report)
    machine: Machine | None = None
    try:
        _check_token_and_app(client, config, verdicts)
        machine = _create(client, config, ledger, run_id, token, verdicts, clock)
        _check_image(client, config, ledger, machine, run_id, verdicts, clock, sleep, poll)
        _check_reach(client, config, ledger, machine, run_id, verdicts, clock, sleep, poll)
    except _Failed:
        pass
    finally:
        if machine is not None:
            with held():  # a second Ctrl-C must not leave the machine running
                result.cost = _clean_up(client, ledger, machine.id, run_id, verdicts, clock)
    return result


def _check_token_and_app(client: MachinesClient, config: FlyConfig, verdicts: _Verdicts) -> None:
    try:
        client.list(metadata={"managed_by": "whisperfarm"})
    except FlyAuthError as error:
        verdicts.fail("token", str(error))
    except FlyError as error:
        if error.status != 404:
            verdicts.fail("token", f"could not ask Fly: {error}")
        verdicts.ok("token", "accepted")
        verdicts.fail("app", str(error))
    verdicts.ok("token", "accepted by Fly's Machines API")
    verdicts.ok("app", f"{config.app} exists")


def _create(
    client: MachinesClient,
    config: FlyConfig,
    ledger: Ledger,
    run_id: str,
    token: str,
    verdicts: _Verdicts,
    clock: Callable[[], float],
) -> Machine:
    name = f"wf-{run_id}"
    machine_config = build_worker_config(
        image=config.image,
        size=config.size,
        env=config.worker_env(token),
        run_id=run_id,
        machine_name=name,
        model=config.model,
    )
    asked = clock()
    try:
        machine = client.create(machine_config, name=name, region=config.region)
    except FlyCapacityError as error:
        verdicts.fail("image", f"no machine to try it on: {error}")
    except FlyError as error:
        verdicts.fail(
            "image",
            f"Fly refused a machine from {config.image}: {error}; deploy the image with "
            f"'{DEPLOY}', or name yours with --image",
        )
    MachineStore(ledger).record_machine(
        machine_id=machine.id,
        run_id=run_id,
        name=name,
        app=config.app,
        region=machine.region or config.region,
        size=config.size.name,
        cpus=config.size.cpus,
        memory_mb=config.size.memory_mb,
        usd_per_second=config.size.usd_per_second,
        state=machine.state or MachineState.CREATED,
        created_at=asked,
    )
    return machine


def _check_image(
    client: MachinesClient,
    config: FlyConfig,
    ledger: Ledger,
    machine: Machine,
    run_id: str,
    verdicts: _Verdicts,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll: float,
) -> None:
    asked = MachineStore(ledger).machines(run_id)[0]["created_at"]
    while True:
        seen = client.get(machine.id)
        state = seen.state
        MachineStore(ledger).update_machine(machine.id, state=state, run_id=run_id)
        # Ended with an exit event: it ran, if briefly (the reach check reads the code).
        ran = state in MACHINE_ENDED and _exit_code(seen) is not None
        if state == MachineState.STARTED or ran:
            verdicts.ok(
                "image",
                f"{config.image} runs on {config.size.name}: started in {clock() - asked:.0f}s",
            )
            return
        if state in MACHINE_ENDED:
            verdicts.fail(
                "image",
                f"the machine from {config.image} ended {state} without running: see "
                f"'fly logs -a {config.app} -i {machine.id}'",
            )
        if clock() - asked >= config.start_timeout:
            verdicts.fail(
                "image",
                f"the machine from {config.image} was still {state} after "
                f"{config.start_timeout:.0f}s: a large image takes long to unpack (Fly's root "
                f"filesystem limit is 8 GB); see 'fly logs -a {config.app} -i {machine.id}'",
            )
        sleep(poll)


def _check_reach(
    client: MachinesClient,
    config: FlyConfig,
    ledger: Ledger,
    machine: Machine,
    run_id: str,
    verdicts: _Verdicts,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll: float,
) -> None:
    url = config.advertise_url
    timeout = config.reach.timeout if config.reach is not None else config.start_timeout
    running = clock()
    while True:
        if ledger.workers_seen([machine.id]):
            verdicts.ok(
                "reach",
                f"its worker reached this coordinator at {url} {clock() - running:.0f}s after "
                "the machine started",
            )
            return
        seen = client.get(machine.id)
        MachineStore(ledger).update_machine(machine.id, state=seen.state, run_id=run_id)
        if seen.state in MACHINE_ENDED and not ledger.workers_seen([machine.id]):
            code = _exit_code(seen)
            if code != EXIT_UNREACHABLE:
                verdicts.fail(
                    "reach",
                    f"the machine's process exited (code {code}) before its worker reached "
                    f"the coordinator: is {config.image} a whisperfarm worker image? see "
                    f"'fly logs -a {config.app} -i {machine.id}'",
                )
            verdicts.fail("reach", _unreachable(url, "its worker gave up on it"))
        if clock() - running >= timeout:
            verdicts.fail("reach", _unreachable(url, f"no claim within {timeout:.0f}s"))
        sleep(poll)


def _unreachable(url: str, what: str) -> str:
    return (
        f"machines can't reach this coordinator at {url} ({what}): bring up a Fly "
        "WireGuard peer (fly wireguard create ORG REGION laptop laptop.conf; wg-quick up "
        "./laptop.conf) and use --host :: --port PORT --advertise-url "
        "http://laptop._peer.internal:PORT, or pass a tunnel's public URL as --advertise-url"
    )


def _clean_up(
    client: MachinesClient,
    ledger: Ledger,
    machine_id: str,
    run_id: str,
    verdicts: _Verdicts,
    clock: Callable[[], float],
) -> float:
    """Destroy the machine (gone already counts); what it cost."""
    machines = MachineStore(ledger)
    (row,) = [row for row in machines.machines(run_id) if row["id"] == machine_id]
    try:
        client.destroy(machine_id, force=True)
    except FlyError as error:
        with contextlib.suppress(_Failed):
            verdicts.fail(
                "cleanup",
                f"could not destroy machine {machine_id} ({error}): run 'whisperfarm machines "
                "reap'",
            )
        return machine_cost(row, clock())
    machines.update_machine(machine_id, state=MachineState.DESTROYED, run_id=run_id)
    (row,) = [row for row in machines.machines(run_id) if row["id"] == machine_id]
    now = clock()
    cost = machine_cost(row, now)
    verdicts.ok(
        "cleanup",
        f"machine {machine_id} destroyed: it ran {machine_seconds(row, now):.0f}s of "
        f"{row['size']}, ${cost:.4f}",
    )
    return cost


def _exit_code(machine: Machine) -> int | None:
    """The worker's exit code from the machine's latest exit event, if Fly gives one."""
    for event in machine.events:  # newest first
        request = event.get("request")
        exit_event = request.get("exit_event") if isinstance(request, dict) else None
        if event.get("type") == "exit" and isinstance(exit_event, dict):
            code = exit_event.get("exit_code")
            return code if isinstance(code, int) else None
    return None


@contextlib.contextmanager
def probe_coordinator(settings: Settings) -> Iterator[str]:
    """A coordinator that serves no episode (a claim answers "done") on the settings'
    host and port, for a worker's claim to reach: yields its token."""
    token = secrets.token_urlsafe(24)
    coordinator = CoordinatorConfig(
        ledger_path=settings.ledger_path,
        token=token,
        scope=list,
        episodes_dir=settings.episodes_dir,
    )
    server = BackgroundServer(create_app(coordinator), bind(settings.host, settings.port))
    server.start()
    try:
        yield token
    finally:
        server.stop()
        coordinator.close()
