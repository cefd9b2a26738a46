"""Fly's rules as the fake applies them: error shapes, faults, rate limits, config checks.

Everything here is pure; ``state.py`` holds the machines and the passing of time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

GPU_ERROR = (
    "failed to launch VM: GPU machines are no longer supported: "
    "config.guest.gpu_kind and config.guest.gpus must be unset"
)
AUTH_ERROR = "Authenticate: token validation error"
CAPACITY_409 = "aborted: could not reserve resource for machine: insufficient memory available"
CAPACITY_412 = "insufficient resources to create new machine"
CAPACITY_503 = "out of capacity"  # fly-go flaps/flaps_error_test.go: a 503 with the status field
START_ERROR = "failed to start VM: could not reserve resource for machine on its host"
WAIT_STATES = frozenset({"started", "stopped", "suspended", "destroyed"})
RESTART_POLICIES = frozenset({"no", "always", "on-failure"})
PERFORMANCE_CPUS = frozenset({1, 2, 4, 8, 16})
SHARED_CPUS = frozenset({1, 2, 4, 8})
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")

# Requests per second and burst, per action and machine (per app for create and list).
# Fly's "Working with the Machines API": 1 req/s with bursts of 3 for every action, List
# included; Get Machine alone is 5 req/s (burst 10, as Fly's rate-limit table has it).
DEFAULT_LIMIT = (1.0, 3)
GET_LIMIT = (5.0, 10)


class ApiError(Exception):
    """An error answer in Fly's shape: ``{"error": ..., "status"?: ...}``."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        status_field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(error)
        self.status = status
        self.error = error
        self.status_field = status_field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.status_field:
            body["status"] = self.status_field
        return body


@dataclass
class Faults:
    """Trouble to inject; counts are used up one request or machine at a time."""

    capacity_409: int = 0  # the next N creates answer 409 "could not reserve resource…"
    capacity_412: int = 0  # the next N creates answer 412 "insufficient resources"
    server_errors: int = 0  # the next N API requests answer server_error_status
    server_error_status: int = 503
    create_408: int = 0  # the next N creates make the machine but answer 408
    never_start: int = 0  # the next N machines stay in "starting" for ever
    die: int = 0  # the next N machines die die_after seconds after reaching "started"
    die_after: float = 1.0
    capacity_503: int = 0  # the next N creates answer 503 "out of capacity" (status field)
    start_error: int = 0  # the next N starts answer 200 with status "error", starting nothing
    unhealthy: int = 0  # the next N machines land on a host whose host_status is unreachable
    list_lag: float = 0.0  # List answers as things were this many seconds ago (Get is current)
    list_empty: int = 0  # the next N List requests answer [] (Fly's infra incident)
    # The next N machines launched sit on a network that can't reach the caller's
    # coordinator (no WireGuard peer, a firewall): see ``cut_off``. A machine stays so.
    unreachable: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise ApiError(400, f"unknown fault {key!r}; known: {', '.join(known)}")
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ApiError(400, f"fault {key} must be a non-negative number")
            setattr(self, key, float(value) if key in _SECONDS else int(value))


_SECONDS = frozenset({"die_after", "list_lag"})
# How a machine on an unhealthy host is served (fly-go machine_types.go, GetConfig()):
# its config as "incomplete_config" instead of "config", or "config": null, or no config.
HOST_CONFIG_VIEWS = ("incomplete", "null", "absent")
HOST_STATUSES = ("ok", "unknown", "unreachable")


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> float | None:
        """None when a request may pass, else the seconds until one may."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


UNREACHABLE_HOST = "127.0.0.1:9"
"""Where an unreachable machine's URLs point: the discard port on loopback, closed on any
test box, so a connection is refused at once and nothing beyond this host is ever tried."""
_URL = re.compile(r"^(https?)://[^/]+", re.IGNORECASE)


def cut_off(env: Mapping[str, str]) -> dict[str, str]:
    """A machine's ``config.env`` as its process sees it from a network that reaches
    nothing the caller runs: every http(s) URL points at a closed loopback port instead.
    The fake can't firewall a process, so it rewrites the addresses it would dial."""
    return {key: _URL.sub(f"http://{UNREACHABLE_HOST}", value) for key, value in env.items()}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration ("30s", "1m30s", "500ms") or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return sum(float(n) * _UNIT[unit] for n, unit in _DURATION.findall(value))
    raise ApiError(400, f"invalid duration {value!r}")


def token_value(header_or_token: str) -> str:
    raw = header_or_token.strip()
    for scheme in ("bearer ", "flyv1 "):
        if raw.lower().startswith(scheme):
            return raw[len(scheme) :].strip()
    return raw


def is_macaroon(token: str) -> bool:
    return any(part.strip().startswith(_MACAROON_PREFIXES) for part in token.split(","))


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(400, f"invalid {what}: must be an object of strings to strings")
    return dict(value)


def validate_config(config: Any) -> dict[str, Any]:
    """Fly's create-time checks that whisperfarm could get wrong; 400 on failure."""
    if not isinstance(config, dict):
        raise ApiError(400, "invalid request: config is required")
    if "region" in config:
        raise ApiError(400, "invalid config: region belongs at the top level of the request")
    if not isinstance(config.get("image"), str) or not config["image"].strip():
        raise ApiError(400, "invalid config.image: an image is required")
    guest = config.get("guest") or {}
    if not isinstance(guest, dict):
        raise ApiError(400, "invalid config.guest")
    if guest.get("gpu_kind") or guest.get("gpus"):
        raise ApiError(400, GPU_ERROR)
    cpu_kind = guest.get("cpu_kind", "shared")
    cpus = guest.get("cpus", 1)
    memory = guest.get("memory_mb", 2048 * cpus if cpu_kind == "performance" else 256)
    if cpu_kind not in ("shared", "performance"):
        raise ApiError(400, f"invalid config.guest.cpu_kind {cpu_kind!r}")
    allowed = PERFORMANCE_CPUS if cpu_kind == "performance" else SHARED_CPUS
    if not isinstance(cpus, int) or cpus not in allowed:
        raise ApiError(400, f"invalid config.guest.cpus {cpus!r} for {cpu_kind} CPUs")
    low, high = (2048, 8192) if cpu_kind == "performance" else (256, 2048)
    if not isinstance(memory, int) or memory % 256 or not low * cpus <= memory <= high * cpus:
        raise ApiError(
            400,
            f"invalid memory size {memory!r}MB for {cpus} {cpu_kind} CPUs: must be a multiple "
            f"of 256 between {low * cpus} and {high * cpus}",
        )
    _string_map(config.get("env"), "config.env")
    _string_map(config.get("metadata"), "config.metadata")
    policy = (config.get("restart") or {}).get("policy")
    if policy is not None and policy not in RESTART_POLICIES:
        raise ApiError(400, f"invalid config.restart.policy {policy!r}")
    cmd = (config.get("init") or {}).get("cmd")
    if cmd is not None and not (isinstance(cmd, list) and all(isinstance(c, str) for c in cmd)):
        raise ApiError(400, "invalid config.init.cmd: must be a list of strings")
    return config
