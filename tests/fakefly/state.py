"""The fake's model of one Fly app's machines, driven by an injectable clock.

Nothing here sleeps or does I/O except through the launcher: time only moves when the clock
says so, and :meth:`FakeFly.advance` applies whatever became due (state transitions,
process exits, kill deadlines, injected deaths). The ASGI layer in ``app.py`` calls it on
every request and, when served for real, from a background ticker.

Fly's unkind parts, each off unless asked for (``Faults``):

- List is eventually consistent (``list_lag``): it answers from the state as it was that
  many seconds ago (new machines missing, old states, destroyed ones still listed), while
  Get is always current; ``include_deleted=true`` lists destroyed ones, with the same lag.
  ``list_empty`` makes List answer ``[]`` (Fly's infra log records such an incident).
- Rate limits per action: 1 req/s, burst 3, for every action (create and list per app, the
  others per machine), except Get Machine at 5 req/s (burst 10); 429 over it.
- Unhealthy hosts (``unhealthy``, or ``set_host``): a machine whose ``host_status`` is not
  ``ok`` is served with a partial ``incomplete_config`` (image and guest only) instead of
  ``config``, or with ``config: null``, or with no config at all (fly-go ``machine_types.go``,
  ``GetConfig()``; flyctl PR 3840 "Dealing with unreachable machines on dead hosts"). What
  Fly's List does with ``metadata.KEY=`` for such a machine is not documented (flaps is not
  public); the fake takes the unkind reading: the filter sees only what the API can show, so
  a metadata-filtered List leaves the machine out, while an unfiltered List shows it
  without its metadata. Get always answers it, with its state.
"""

from __future__ import annotations

import secrets
import signal as signals
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakefly.launcher import Handle, LaunchSpec
from tests.fakefly.rules import (
    AUTH_ERROR,
    CAPACITY_409,
    CAPACITY_412,
    CAPACITY_503,
    DEFAULT_LIMIT,
    GET_LIMIT,
    HOST_CONFIG_VIEWS,
    HOST_STATUSES,
    START_ERROR,
    ApiError,
    Faults,
    TokenBucket,
    cut_off,
    is_macaroon,
    parse_duration,
    token_value,
    validate_config,
)

ACTIVE_STATES = frozenset({"starting", "started", "stopping"})

Clock = Callable[[], float]
Launcher = Callable[[LaunchSpec], Handle]


@dataclass
class FakeMachine:
    id: str
    name: str
    region: str
    config: dict[str, Any]
    instance_id: str
    private_ip: str
    created: float
    state: str = "created"
    updated: float = 0.0
    history: list[tuple[str, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[tuple[float, str]] = field(default_factory=list)
    process: Handle | None = None
    pid: int | None = None
    stop_requested: bool = False
    kill_at: float | None = None
    die_after: float | None = None
    die_at: float | None = None
    never_start: bool = False
    unreachable: bool = False  # its network can't reach the caller (Faults.unreachable)
    ready_at: float = 0.0  # when its image is unpacked: no start completes before then
    restarts: int = 0
    exit_code: int | None = None
    host_status: str = "ok"
    config_view: str = "incomplete"  # how its config is served while the host is not ok
    versions: list[tuple[float, dict[str, Any], str]] = field(default_factory=list)
    # (since when, config, instance_id): what a lagging List shows as of an earlier time

    @property
    def auto_destroy(self) -> bool:
        return bool(self.config.get("auto_destroy"))

    @property
    def restart_policy(self) -> str:
        # Unset means "always" here, like `fly m run`; whisperfarm must set "no" itself.
        return (self.config.get("restart") or {}).get("policy") or "always"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeFly:
    """One fake Fly app: its machines, rate limits, faults and launcher."""

    def __init__(
        self,
        *,
        app: str = "whisperfarm-workers",
        token: str = "fake-token",
        region: str = "ord",
        start_latency: float = 1.0,
        stop_latency: float = 0.0,
        warm_start_latency: float | None = None,
        update_launches: bool = False,
        clock: Clock = time.time,
        launcher: Launcher | None = None,
        faults: Faults | None = None,
        rate_limit: bool = True,
        retry_after: bool = False,
    ):
        """``start_latency`` is a first launch: Fly pulls and unpacks the image, boots.
        ``warm_start_latency`` (default the same) is starting a machine whose image is
        already unpacked: a stopped one, or one created with ``skip_launch`` at least
        ``start_latency`` ago (the unpacking goes on after such a create; a start before it
        is done waits for it). ``update_launches``: an update starts a stopped machine
        even when asked to ``skip_launch`` (the reading of Fly's docs that the client must
        also tolerate)."""
        self.app = app
        self.token = token_value(token)
        self.region = region
        self.start_latency = start_latency
        self.warm_start_latency = (
            start_latency if warm_start_latency is None else warm_start_latency
        )
        self.update_launches = update_launches
        self.stop_latency = stop_latency
        self.clock = clock
        self.launcher = launcher
        self.faults = faults or Faults()
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.machines: dict[str, FakeMachine] = {}
        self.requests: Counter[str] = Counter()
        self.wait_params: Counter[str] = Counter()  # which version parameter /wait got
        self.rate_limited: Counter[str] = Counter()  # 429s by action
        self.started_now = self.max_started = 0
        self.active_now = self.max_active = 0
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._replaced: list[Handle] = []  # processes of replaced VMs, killed, to reap

    # -- the gate every API request passes --------------------------------------------------

    def admit(self, authorization: str | None, app: str, action: str, key: str) -> None:
        """Auth, app, rate limit and injected 5xx, in that order."""
        self.requests[action] += 1
        sent = authorization or ""
        scheme_ok = sent.lower().startswith("flyv1 " if is_macaroon(self.token) else "bearer ")
        if not scheme_ok or token_value(sent) != self.token:
            raise ApiError(401, AUTH_ERROR)
        if app != self.app:
            raise ApiError(404, f"app not found: {app}")
        self.advance()
        if self.rate_limit:
            rate, burst = GET_LIMIT if action == "get" else DEFAULT_LIMIT
            now = self.clock()
            bucket = self._buckets.setdefault((action, key), TokenBucket(rate, burst, now))
            wait = bucket.take(now)
            if wait is not None:
                self.requests["rate_limited"] += 1
                self.rate_limited[action] += 1
                headers = {"Retry-After": str(max(1, round(wait + 0.499)))}
                raise ApiError(
                    429, "rate limit exceeded", headers=headers if self.retry_after else None
                )
        if self.faults.server_errors > 0:
            self.faults.server_errors -= 1
            raise ApiError(self.faults.server_error_status, "internal error: try again")

    # -- the endpoints ----------------------------------------------------------------------

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        config = validate_config(body.get("config"))
        region = body.get("region") or self.region
        name = body.get("name") or f"fake-{secrets.token_hex(4)}"
        if not isinstance(region, str) or not isinstance(name, str):
            raise ApiError(400, "invalid request: name and region must be strings")
        faults = self.faults
        if faults.capacity_409 > 0:
            faults.capacity_409 -= 1
            raise ApiError(409, CAPACITY_409, status_field="insufficient_capacity")
        if faults.capacity_412 > 0:
            faults.capacity_412 -= 1
            raise ApiError(412, CAPACITY_412, status_field="insufficient_capacity")
        if faults.capacity_503 > 0:
            faults.capacity_503 -= 1
            raise ApiError(503, CAPACITY_503, status_field="insufficient_capacity")
        now = self.clock()
        machine = FakeMachine(
            id=secrets.token_hex(7),
            name=name,
            region=region,
            config=config,
            instance_id="01" + secrets.token_hex(12).upper(),
            private_ip=f"fdaa:0:1:a7b:{len(self.machines) + 1:x}::2",
            created=now,
            ready_at=now + self.start_latency,
        )
        if faults.never_start > 0:
            faults.never_start -= 1
            machine.never_start = True
        if faults.die > 0:
            faults.die -= 1
            machine.die_after = faults.die_after
        if faults.unhealthy > 0:
            faults.unhealthy -= 1
            machine.host_status = "unreachable"
        machine.versions.append((now, config, machine.instance_id))
        self.machines[machine.id] = machine
        self._set_state(machine, "created", now)
        self._event(machine, "launch", "created", now)
        if not body.get("skip_launch"):
            self._schedule_start(machine, now)
        answer = self.to_api(machine)
        if faults.create_408 > 0:
            faults.create_408 -= 1
            raise ApiError(408, "deadline_exceeded: context deadline exceeded")
        return answer

    def get(self, machine_id: str) -> dict[str, Any]:
        return self.to_api(self.machine(machine_id))

    def list(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """Machines as they were ``list_lag`` seconds ago; a metadata filter sees only the
        metadata the API can show (none for a machine whose host is not ok)."""
        if self.faults.list_empty > 0:
            self.faults.list_empty -= 1
            return []
        include_deleted = params.get("include_deleted", "").lower() in ("true", "1")
        wanted = {k[len("metadata.") :]: v for k, v in params.items() if k.startswith("metadata.")}
        as_of = self.clock() - self.faults.list_lag
        found = []
        for machine in self.machines.values():
            if machine.created > as_of:
                continue  # not created yet, as far as the read side knows
            view = self.to_api(machine, as_of=as_of)
            metadata = (view.get("config") or {}).get("metadata") or {}
            if view["state"] == "destroyed" and not include_deleted:
                continue
            if params.get("region") and machine.region != params["region"]:
                continue
            if any(metadata.get(k) != v for k, v in wanted.items()):
                continue
            found.append(view)
        return found

    def start(self, machine_id: str) -> dict[str, Any]:
        machine = self._live(machine_id)
        previous = machine.state
        now = self.clock()
        if previous in ("created", "stopped", "failed") and self.faults.start_error > 0:
            # flyctl's `machine start` reads a 200 whose status is "error" as a failed start.
            self.faults.start_error -= 1
            self._event(machine, "start", "error", now)
            return {"message": START_ERROR, "status": "error", "previous_state": previous}
        if previous in ("created", "stopped", "failed"):
            self._schedule_start(machine, now)
            self._event(machine, "start", "requested", now)
        elif previous not in ("starting", "started"):
            raise ApiError(412, f"unable to start machine from current state: '{previous}'")
        return {"message": "", "status": "", "previous_state": previous}

    def update(self, machine_id: str, body: Any) -> dict[str, Any]:
        """Replace the machine's config, as Fly's update does (a new ``instance_id``).

        A machine that is not running stays so when asked to ``skip_launch`` (unless the
        fake was made with ``update_launches``), else starts. A running one is replaced:
        its VM is killed and it comes back with the new config, or stays stopped when
        asked to ``skip_launch``. A new image has to be unpacked again."""
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        machine = self._live(machine_id)
        config = validate_config(body.get("config"))
        now = self.clock()
        if config["image"] != machine.config.get("image"):
            machine.ready_at = now + self.start_latency
        machine.config = config
        machine.instance_id = "01" + secrets.token_hex(12).upper()
        machine.versions.append((now, config, machine.instance_id))
        self._event(machine, "update", "requested", now)
        launch = not body.get("skip_launch") or self.update_launches
        previous = machine.state
        if previous in ACTIVE_STATES:
            if machine.process is not None:
                machine.process.kill()
                self._replaced.append(machine.process)
                machine.process = None
            machine.schedule.clear()
            machine.kill_at = machine.die_at = None
            self._set_state(machine, "replacing", now)
            previous = "stopped"
        else:
            self._set_state(machine, "updating", now)
        self._set_state(machine, previous, now)
        if launch:
            self._schedule_start(machine, now)
            self._event(machine, "start", "requested", now)
        return self.to_api(machine)

    def stop(self, machine_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        machine = self._live(machine_id)
        stop_config = machine.config.get("stop_config") or {}
        name = body.get("signal") or stop_config.get("signal") or "SIGINT"
        try:
            signum = signals.Signals[name].value
        except KeyError:
            raise ApiError(400, f"invalid signal {name!r}") from None
        timeout = parse_duration(body.get("timeout") or stop_config.get("timeout") or "5s")
        now = self.clock()
        if machine.state not in ("created", "starting", "started"):
            return {"ok": True}
        machine.stop_requested = True
        machine.schedule.clear()
        self._event(machine, "stop", "requested", now)
        self._set_state(machine, "stopping", now)
        if machine.process is not None:
            machine.process.send_signal(signum)
            machine.kill_at = now + timeout
        else:
            machine.schedule.append((now + self.stop_latency, "stopped"))
        return {"ok": True}

    def destroy(self, machine_id: str, *, force: bool) -> dict[str, Any]:
        machine = self._live(machine_id)
        if machine.state in ACTIVE_STATES and not force:
            raise ApiError(
                412, "failed to destroy VM: unable to destroy machine, not currently stopped"
            )
        now = self.clock()
        if machine.process is not None:
            machine.process.kill()  # its exit is collected, and ignored, by advance()
        machine.schedule.clear()
        self._event(machine, "destroy", "requested", now)
        self._set_state(machine, "destroying", now)
        self._enter(machine, "destroyed", now)
        return {"ok": True}

    def crash(self, machine_id: str, exit_code: int = 137) -> None:
        """The machine's process dies now, as if OOM-killed (the die fault, on demand)."""
        machine = self._live(machine_id)
        if machine.process is not None:
            machine.process.kill()
        elif machine.state == "started":
            self._on_exit(machine, exit_code, self.clock())

    def set_host(self, machine_id: str, status: str, view: str = "incomplete") -> None:
        """Put the machine's host in ``status``; while not ``ok`` its config is served as
        ``view``: ``incomplete`` (incomplete_config), ``null`` or ``absent``."""
        if status not in HOST_STATUSES or view not in HOST_CONFIG_VIEWS:
            raise ApiError(
                400,
                f"host status one of {', '.join(HOST_STATUSES)}; "
                f"config view one of {', '.join(HOST_CONFIG_VIEWS)}",
            )
        machine = self.machine(machine_id)
        machine.host_status, machine.config_view = status, view

    def reached(self, machine: FakeMachine, state: str, since: int) -> bool:
        """Whether the machine is in ``state`` or passed through it after history[since]."""
        return machine.state == state or any(s == state for s, _ in machine.history[since:])

    # -- time passing -----------------------------------------------------------------------

    def advance(self) -> None:
        """Apply everything due by now, in time order across machines."""
        now = self.clock()
        while True:
            due = [
                (m.schedule[0][0], m)
                for m in self.machines.values()
                if m.schedule and m.schedule[0][0] <= now
            ]
            if due:
                at, machine = min(due, key=lambda item: item[0])
                _, state = machine.schedule.pop(0)
                self._enter(machine, state, at)
                continue
            for machine in self.machines.values():
                self._check_process(machine, now)
            self._replaced = [handle for handle in self._replaced if handle.poll() is None]
            # An exit may have scheduled a restart that is already due.
            if not any(m.schedule and m.schedule[0][0] <= now for m in self.machines.values()):
                break

    def _check_process(self, machine: FakeMachine, now: float) -> None:
        if machine.process is not None:
            code = machine.process.poll()
            if code is not None:
                machine.process = None
                self._on_exit(machine, 128 - code if code < 0 else code, now)
            elif machine.kill_at is not None and now >= machine.kill_at:
                machine.kill_at = None
                machine.process.kill()
        if machine.die_at is not None and now >= machine.die_at:
            machine.die_at = machine.die_after = None  # it dies once
            if machine.state == "started":
                self.crash(machine.id)

    def _schedule_start(self, machine: FakeMachine, now: float) -> None:
        machine.stop_requested = False
        machine.schedule = [(now, "starting")]
        if not machine.never_start:
            started = max(now + self.warm_start_latency, machine.ready_at)
            machine.schedule.append((started, "started"))

    def _enter(self, machine: FakeMachine, state: str, at: float) -> None:
        self._set_state(machine, state, at)
        if state == "started":
            self._event(machine, "start", "started", at)
            if machine.die_after is not None:
                machine.die_at = at + machine.die_after
            self._launch(machine, at)
        elif state == "stopped":
            machine.stop_requested = False
            machine.kill_at = machine.die_at = None
            if machine.auto_destroy:
                self._set_state(machine, "destroying", at)
                self._enter(machine, "destroyed", at)
        elif state == "destroyed":
            machine.kill_at = machine.die_at = None
            machine.schedule.clear()

    def _launch(self, machine: FakeMachine, at: float) -> None:
        if self.launcher is None:
            return
        if self.faults.unreachable > 0 and not machine.unreachable:
            self.faults.unreachable -= 1
            machine.unreachable = True
        machine_env = machine.config.get("env") or {}
        env = {
            "FLY_APP_NAME": self.app,
            "FLY_MACHINE_ID": machine.id,
            "FLY_ALLOC_ID": machine.id,
            "FLY_REGION": machine.region,
            "FLY_PRIVATE_IP": machine.private_ip,
            "FLY_IMAGE_REF": machine.config["image"],
            "FLY_MACHINE_VERSION": machine.instance_id,
            "FLY_PROCESS_GROUP": "app",
            "FLY_VM_MEMORY_MB": str((machine.config.get("guest") or {}).get("memory_mb", 256)),
            "PRIMARY_REGION": self.region,
            **(cut_off(machine_env) if machine.unreachable else machine_env),
        }
        spec = LaunchSpec(self.app, machine.id, machine.name, machine.region, machine.config, env)
        try:
            machine.process = self.launcher(spec)
        except Exception as error:  # a launcher that can't start is a machine that failed
            self._event(machine, "launch", f"failed: {error}", at)
            self._set_state(machine, "failed", at)
            return
        machine.pid = machine.process.pid

    def _on_exit(self, machine: FakeMachine, exit_code: int, now: float) -> None:
        machine.exit_code = exit_code
        requested = machine.stop_requested
        exit_event = {"exit_code": exit_code, "oom_killed": False, "requested_stop": requested}
        self._event(machine, "exit", "stopped", now, request={"exit_event": exit_event})
        if machine.state in ("destroying", "destroyed"):
            return
        policy = machine.restart_policy
        retries = (machine.config.get("restart") or {}).get("max_retries", 10)
        if not requested and (
            policy == "always"
            or (policy == "on-failure" and exit_code != 0 and machine.restarts < retries)
        ):
            machine.restarts += 1
            self._schedule_start(machine, now)
            return
        self._enter(machine, "stopped", now)

    def _set_state(self, machine: FakeMachine, state: str, at: float) -> None:
        was = machine.state if machine.history else None
        machine.state = state
        machine.updated = at
        machine.history.append((state, at))
        self.started_now += (state == "started") - (was == "started")
        self.active_now += (state in ACTIVE_STATES) - (was in ACTIVE_STATES)
        self.max_started = max(self.max_started, self.started_now)
        self.max_active = max(self.max_active, self.active_now)

    @staticmethod
    def _event(machine: FakeMachine, kind: str, status: str, at: float, **extra: Any) -> None:
        event = {"type": kind, "status": status, "source": "flyd", "timestamp": int(at * 1000)}
        machine.events.append(event | extra)

    # -- lookups and views ------------------------------------------------------------------

    def machine(self, machine_id: str) -> FakeMachine:
        try:
            return self.machines[machine_id]
        except KeyError:
            raise ApiError(404, "machine not found") from None

    def _live(self, machine_id: str) -> FakeMachine:
        machine = self.machine(machine_id)
        if machine.state == "destroyed":
            raise ApiError(404, "machine not found")
        return machine

    def to_api(self, machine: FakeMachine, as_of: float | None = None) -> dict[str, Any]:
        """The machine as the API shows it now, or as of an earlier time (at or after its
        creation)."""
        config, instance_id, state, updated = (
            machine.config,
            machine.instance_id,
            machine.state,
            machine.updated,
        )
        events = machine.events
        if as_of is not None and as_of < self.clock():
            config, instance_id = next(
                (c, i) for at, c, i in reversed(machine.versions) if at <= as_of
            )
            state, updated = next((s, at) for s, at in reversed(machine.history) if at <= as_of)
            events = [e for e in events if e["timestamp"] <= as_of * 1000]
        image = config["image"]
        repository, tag = image, "latest"
        if ":" in image.rsplit("/", 1)[-1]:
            repository, tag = image.rsplit(":", 1)
        registry, _, path = repository.partition("/")
        if not path:
            registry, path = "", repository
        view: dict[str, Any] = {
            "id": machine.id,
            "name": machine.name,
            "state": state,
            "region": machine.region,
            "instance_id": instance_id,
            "private_ip": machine.private_ip,
            "config": config,
            "image_ref": {"registry": registry, "repository": path, "tag": tag},
            "created_at": _iso(machine.created),
            "updated_at": _iso(updated),
            "events": list(reversed(events)),
            "host_status": machine.host_status,
        }
        if machine.host_status != "ok":
            # The host can't be asked: only a partial config, rebuilt from elsewhere.
            del view["config"]
            if machine.config_view == "incomplete":
                view["incomplete_config"] = {"image": image, "guest": config.get("guest")}
            elif machine.config_view == "null":
                view["config"] = None
        return view

    def snapshot(self) -> dict[str, Any]:
        """Everything ever created, with state histories, for test assertions."""
        self.advance()
        machines = []
        for machine in self.machines.values():
            view = self.to_api(machine)
            view["config"] = machine.config  # the truth, whatever its host shows
            view["history"] = [{"state": s, "at": at} for s, at in machine.history]
            view["pid"] = machine.pid
            view["running"] = machine.process is not None
            view["exit_code"] = machine.exit_code
            view["restarts"] = machine.restarts
            view["unreachable"] = machine.unreachable
            machines.append(view)
        return {
            "app": self.app,
            "now": self.clock(),
            "machines": machines,
            "started_now": self.started_now,
            "max_concurrent_started": self.max_started,
            "max_concurrent_active": self.max_active,
            "requests": dict(self.requests),
            "wait_params": dict(self.wait_params),
            "rate_limited": dict(self.rate_limited),
            "faults": asdict(self.faults),
        }

    def shutdown(self, grace: float = 2.0) -> None:
        """Kill every process still running (the server is going away)."""
        for machine in self.machines.values():
            if machine.process is not None:
                machine.process.kill()
        deadline = time.monotonic() + grace
        for machine in self.machines.values():
            while machine.process is not None and machine.process.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
