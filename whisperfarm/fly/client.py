"""A small client for Fly's Machines API, the one layer of whisperfarm that talks to Fly.

Everything here follows shared/FLY_MACHINES_API.md. Retries live only in this module:

    capacity  (retried on create, then         any answer whose body has
               FlyCapacityError)               "status": "insufficient_capacity" (409, 412,
                                               503...), and a 412 to a create
    transient (retried, then FlyUnavailable)   408, 429, 5xx, transport errors and timeouts
    final                                      401 -> FlyAuthError, 400 about GPUs ->
                                               FlyGPUUnsupported, other 4xx -> FlyError;
                                               a start answered 200 with "status": "error"
                                               -> FlyStartFailed

A create that fails ambiguously (408, 5xx, timeout) may still have made the machine, so
before trying again the client looks for a machine with the caller's unique ``name`` and
returns it instead of creating a second one.

The ``httpx.Client``, ``sleep`` and ``clock`` are injectable so tests run without sockets or
real waiting.
"""

from __future__ import annotations

import builtins
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from whisperfarm.errors import (
    FlyAuthError,
    FlyCapacityError,
    FlyError,
    FlyGPUUnsupported,
    FlyStartFailed,
    FlyUnavailable,
)
from whisperfarm.fly.pricing import GPU_GONE_MESSAGE, Size, size_named
from whisperfarm.states import MachineState
from worker.config import WorkerConfig

DEFAULT_BASE_URL = "https://api.machines.dev"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_WAIT_REQUEST_S = 60  # Fly rejects /wait timeouts above 60 s
STATUS_PAGE = "https://status.flyio.net"
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")
CAPACITY_STATUS = "insufficient_capacity"  # fly-go flaps/flaps_error.go

T = TypeVar("T")
_SCHEME = re.compile(r"^(bearer|flyv1)(\s+|$)", re.IGNORECASE)


def auth_header(token: str) -> str:
    """The ``Authorization`` value for a Fly token, following flyctl's rules.

    Tokens from ``fly tokens create`` are macaroons (``FlyV1 fm2_…``, possibly several
    comma-separated parts) and go out as ``FlyV1 <parts>``; anything else is a Bearer token.
    """
    raw = _SCHEME.sub("", token.strip()).strip()
    if not raw:
        raise FlyAuthError(
            "No Fly API token: set FLY_API_TOKEN to a token from `fly tokens create deploy`"
        )
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if any(part.startswith(_MACAROON_PREFIXES) for part in parts):
        return "FlyV1 " + ",".join(parts)
    return f"Bearer {raw}"


class Machine(BaseModel):
    """The fields of Fly's machine object that whisperfarm reads.

    When the machine's host is not ``ok`` Fly may send its config as ``incomplete_config``
    (a partial rebuild), as ``null`` or not at all (fly-go ``machine_types.go``,
    ``GetConfig()``); a ``config`` sent from such a host may be partial too. ``config`` is
    then what could be seen (maybe nothing) and ``metadata_known`` is False: a missing key
    in ``metadata`` proves nothing, so such a machine is neither ours nor not ours by its
    metadata.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str = ""
    state: str = ""
    region: str = ""
    instance_id: str | None = None
    private_ip: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    metadata_known: bool = True
    host_status: str = "ok"
    created_at: str | None = None
    updated_at: str | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _visible_config(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "metadata_known" in data:
            return data
        data = dict(data)
        config = data.get("config")
        if not isinstance(config, dict):
            data["config"] = data.get("incomplete_config") or {}
            data["metadata_known"] = False
        if data.get("host_status") is None:
            data.pop("host_status", None)
        elif data["host_status"] != "ok":
            # Whatever config came from an unhealthy host may be partial: don't believe
            # its metadata either way.
            data["metadata_known"] = False
        return data

    @property
    def metadata(self) -> dict[str, str]:
        """The metadata Fly showed: all of it only when ``metadata_known``."""
        return dict(self.config.get("metadata") or {})


def build_worker_config(
    *,
    image: str,
    size: Size | str,
    env: Mapping[str, str],
    run_id: str,
    machine_name: str,
    model: str,
    memory_mb: int | None = None,
    stop_timeout: str = "30s",
    gpu_kind: str | None = None,
    gpus: int | None = None,
) -> dict[str, Any]:
    """The machine config for one worker: exits once, then Fly destroys it.

    ``gpu_kind``/``gpus`` exist only to fail with a useful message: Fly has no GPUs any more.
    The model name reaches the worker as ``WHISPERFARM_MODEL`` unless ``env`` sets it.
    """
    if gpu_kind or gpus:
        raise FlyGPUUnsupported(GPU_GONE_MESSAGE)
    if not image:
        raise ValueError("image is required, e.g. registry.fly.io/whisperfarm-workers:v1")
    spec = size_named(size) if isinstance(size, str) else size
    worker_env: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(value, str):
            raise TypeError(f"env[{key!r}] must be a str, got {type(value).__name__}")
        worker_env[key] = value
    worker_env = {**WorkerConfig.for_worker(preload_model=model).to_env(), **worker_env}
    return {
        "image": image,
        "guest": {
            "cpu_kind": "performance",
            "cpus": spec.cpus,
            "memory_mb": memory_mb or spec.memory_mb,
        },
        "env": worker_env,
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "metadata": {
            "whisperfarm_run": run_id,
            "whisperfarm_machine": machine_name,
            "managed_by": "whisperfarm",
        },
        "init": {"cmd": ["python", "-m", "worker"]},
        "stop_config": {"signal": "SIGTERM", "timeout": stop_timeout},
    }


def _refuse_gpu(config: Mapping[str, Any]) -> None:
    guest = config.get("guest") or {}
    if guest.get("gpu_kind") or guest.get("gpus"):
        raise FlyGPUUnsupported(GPU_GONE_MESSAGE)


class _Retryable(Exception):
    """One failed attempt worth trying again; never leaves this module."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
        capacity: bool = False,
    ):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.ambiguous = ambiguous  # the request may have taken effect
        self.capacity = capacity


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("error", "message") if body.get(key)]
        if parts:
            return ": ".join(dict.fromkeys(parts))
    return str(body)[:300]


def _body_status(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


def _is_capacity(response: httpx.Response, *, creating: bool) -> bool:
    """Fly says capacity with the body's status field, whatever the HTTP code (409, 412,
    503 are seen); a 412 to a create is Fly's "insufficient resources" even without it."""
    if _body_status(response) == CAPACITY_STATUS:
        return True
    return creating and response.status_code == 412


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


class MachinesClient:
    """Create, inspect, stop and destroy the machines of one Fly app."""

    def __init__(
        self,
        app: str,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 6,
        max_backoff: float = 30.0,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.app = app
        self._base = f"{base_url.rstrip('/')}/v1/apps/{app}/machines"
        self._headers = {"Authorization": auth_header(token), "Accept": "application/json"}
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=DEFAULT_TIMEOUT)
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> MachinesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the API ----------------------------------------------------------------------------

    def create(
        self,
        config: Mapping[str, Any],
        *,
        name: str,
        region: str | None = None,
        skip_launch: bool = False,
    ) -> Machine:
        """Create (and launch, unless ``skip_launch``) a machine called ``name``, which must
        be unique in the app."""
        _refuse_gpu(config)
        body: dict[str, Any] = {"name": name, "config": dict(config)}
        if region:
            body["region"] = region
        if skip_launch:
            body["skip_launch"] = True
        ambiguous = False

        def attempt() -> Machine:
            nonlocal ambiguous
            if ambiguous:
                existing = self._find_named(name)
                if existing is not None:
                    return existing
            try:
                response = self._send("POST", "", json=body, capacity_retryable=True)
            except _Retryable as failure:
                ambiguous = ambiguous or failure.ambiguous
                raise
            return Machine.model_validate(response.json())

        where = f"region {region}" if region else "the app's default region"
        try:
            return self._retrying(attempt, f"create machine {name} in {where}")
        except FlyUnavailable:
            if ambiguous:  # the last attempt may have worked after all
                existing = self._find_named_quietly(name)
                if existing is not None:
                    return existing
            raise

    def get(self, machine_id: str) -> Machine:
        response = self._request("GET", f"/{machine_id}", what=f"get machine {machine_id}")
        return Machine.model_validate(response.json())

    def find(self, machine_id: str) -> Machine | None:
        """Get a machine; None when Fly says there is no such machine (404), which, with a
        machine answered ``destroyed``, is the only proof that one is gone: Fly's List is
        eventually consistent and may leave out machines that exist and bill."""
        response = self._request(
            "GET",
            f"/{machine_id}",
            passthrough=frozenset({404}),
            what=f"get machine {machine_id}",
        )
        if response.status_code == 404:
            if "app not found" in _error_text(response).lower():
                raise FlyError(
                    f"Fly app {self.app} not found: create it with 'fly apps create {self.app}', "
                    "or set FLY_APP / --app",
                    status=404,
                    request_id=response.headers.get("fly-request-id"),
                )
            return None
        return Machine.model_validate(response.json())

    def list(
        self, *, metadata: Mapping[str, str] | None = None, include_deleted: bool = False
    ) -> builtins.list[Machine]:
        params = self._list_params(metadata, include_deleted)
        response = self._request("GET", "", params=params, what=f"list machines of {self.app}")
        return [Machine.model_validate(item) for item in response.json()]

    def update(
        self, machine_id: str, config: Mapping[str, Any], *, skip_launch: bool = True
    ) -> Machine:
        """Replace a machine's config (``POST …/{id}``, from Fly's public docs; not in
        shared/FLY_MACHINES_API.md). Whether an update of a stopped machine also starts it
        is not confirmed either way, so callers ask ``skip_launch`` and start it themselves.
        Sending the same config twice is harmless, so ambiguous failures are retried."""
        _refuse_gpu(config)
        response = self._request(
            "POST",
            f"/{machine_id}",
            json={"config": dict(config), "skip_launch": skip_launch},
            what=f"update machine {machine_id}",
        )
        return Machine.model_validate(response.json())

    def start(self, machine_id: str) -> None:
        """Start a machine. Fly may answer 200 with ``"status": "error"`` when the start
        failed (flyctl's ``machine start`` reads it so): that raises FlyStartFailed."""
        response = self._request("POST", f"/{machine_id}/start", what=f"start machine {machine_id}")
        if _body_status(response) == "error":
            raise FlyStartFailed(
                f"Fly could not start machine {machine_id} ({_error_text(response)}); "
                f"check it with `fly machine status {machine_id} -a {self.app}`",
                status=response.status_code,
                request_id=response.headers.get("fly-request-id"),
            )

    def stop(self, machine_id: str, *, signal: str = "SIGTERM", timeout: str = "30s") -> None:
        self._request(
            "POST",
            f"/{machine_id}/stop",
            json={"signal": signal, "timeout": timeout},
            what=f"stop machine {machine_id}",
        )

    def destroy(self, machine_id: str, *, force: bool = True) -> None:
        """Destroy a machine; one that is already gone (404) counts as destroyed."""
        self._request(
            "DELETE",
            f"/{machine_id}",
            params={"force": "true"} if force else None,
            passthrough=frozenset({404}),
            what=f"destroy machine {machine_id}",
        )

    def wait(
        self,
        machine_id: str,
        state: str,
        *,
        timeout: float = 300,
        version: str | None = None,
    ) -> Machine:
        """Block until the machine reaches ``state``, looping on Fly's 60 s /wait limit.

        ``version`` is the machine's ``instance_id`` (Fly's parameter of that name is
        deprecated; ``version`` replaces it); looked up when waiting for ``stopped``."""
        if state == MachineState.STOPPED and version is None:
            # Fly documents the version as required for state=stopped.
            version = self.get(machine_id).instance_id
        deadline = self._clock() + timeout
        last = ""
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise FlyUnavailable(
                    f"Machine {machine_id} did not reach state '{state}' within {timeout:g}s"
                    f"{f' ({last})' if last else ''}; check it with "
                    f"`fly machine status {machine_id} -a {self.app}`"
                )
            seconds = max(1, min(MAX_WAIT_REQUEST_S, math.ceil(remaining)))
            params = {"state": state, "timeout": str(seconds)}
            if version:
                params["version"] = version
            response = self._request(
                "GET",
                f"/{machine_id}/wait",
                params=params,
                timeout=httpx.Timeout(seconds + 15.0, connect=10.0),
                passthrough=frozenset({408}),
                what=f"wait for machine {machine_id} to be {state}",
            )
            if response.status_code != 408:
                break
            last = _error_text(response)
        # A destroyed machine may already be gone from GET; that is what was waited for.
        gone_ok = frozenset({404}) if state == MachineState.DESTROYED else frozenset()
        response = self._request(
            "GET", f"/{machine_id}", passthrough=gone_ok, what=f"get machine {machine_id}"
        )
        if response.status_code == 404:
            return Machine(id=machine_id, state=MachineState.DESTROYED)
        return Machine.model_validate(response.json())

    # -- the retry layer --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: httpx.Timeout | None = None,
        passthrough: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        return self._retrying(
            lambda: self._send(
                method, path, params=params, json=json, timeout=timeout, passthrough=passthrough
            ),
            what,
        )

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait_for,
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
        )
        try:
            return retrying(attempt)
        except RetryError as error:
            last = error.last_attempt.exception()
            assert isinstance(last, _Retryable)
            self._give_up(last, what)

    def _wait_for(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, _Retryable) and failure.retry_after is not None:
            return min(failure.retry_after, self._max_backoff)
        # Exponential from 0.5 s plus up to 1 s of jitter, capped (what
        # tenacity's wait_exponential_jitter does, spelled out: its arguments
        # changed names between the versions pyproject allows).
        attempt = retry_state.attempt_number
        backoff = 0.5 * 2 ** min(attempt - 1, 30) + random.uniform(0, 1.0)
        return min(backoff, self._max_backoff)

    def _give_up(self, last: _Retryable, what: str) -> NoReturn:
        tries = f"after {self._max_attempts} attempts"
        if last.capacity:
            raise FlyCapacityError(
                f"Fly has no capacity to {what} {tries} ({last.detail}); "
                "try again later or choose another region",
                status=last.status,
                request_id=last.request_id,
            )
        raise FlyUnavailable(
            f"Fly's Machines API kept failing to {what} {tries} ({last.detail}); "
            f"check {STATUS_PAGE} and try again later",
            status=last.status,
            request_id=last.request_id,
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: httpx.Timeout | None = None,
        passthrough: frozenset[int] = frozenset(),
        capacity_retryable: bool = False,
    ) -> httpx.Response:
        """One attempt: a response, a _Retryable, or a final FlyError."""
        try:
            request = self._http.build_request(
                method,
                self._base + path,
                params=params,
                json=json,
                headers=self._headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            response = self._http.send(request)
        except httpx.TransportError as error:  # includes every timeout
            raise _Retryable(f"{type(error).__name__}: {error}", ambiguous=True) from error
        status = response.status_code
        if response.is_success or status in passthrough:
            return response
        text = _error_text(response)
        request_id = response.headers.get("fly-request-id")
        detail = f"HTTP {status}: {text}"
        if status == 401:
            raise FlyAuthError(
                "Fly rejected the API token: set FLY_API_TOKEN to a token from "
                f"`fly tokens create deploy -a {self.app}` (Fly said: {text})",
                status=status,
                request_id=request_id,
            )
        if _is_capacity(response, creating=capacity_retryable):
            if capacity_retryable:
                raise _Retryable(detail, status=status, request_id=request_id, capacity=True)
            raise FlyCapacityError(
                f"Fly has no capacity right now ({detail}); try again later or choose "
                "another region",
                status=status,
                request_id=request_id,
            )
        if status in (408, 429) or status >= 500:
            raise _Retryable(
                detail,
                status=status,
                request_id=request_id,
                retry_after=_retry_after(response) if status == 429 else None,
                ambiguous=status != 429,
            )
        if status == 404 and "app not found" in text.lower():
            raise FlyError(
                f"Fly app {self.app} not found: create it with 'fly apps create {self.app}', "
                "or set FLY_APP / --app",
                status=status,
                request_id=request_id,
            )
        if status == 400 and "gpu" in text.lower():
            raise FlyGPUUnsupported(
                f"{GPU_GONE_MESSAGE} (Fly said: {text})", status=status, request_id=request_id
            )
        raise FlyError(
            f"Fly's Machines API refused {method} /v1/apps/{self.app}/machines{path} ({detail})",
            status=status,
            request_id=request_id,
        )

    # -- finding a machine by its unique name -----------------------------------------------

    @staticmethod
    def _list_params(metadata: Mapping[str, str] | None, include_deleted: bool) -> dict[str, str]:
        params = {f"metadata.{key}": value for key, value in (metadata or {}).items()}
        if include_deleted:
            params["include_deleted"] = "true"
        return params

    def _find_named(self, name: str) -> Machine | None:
        """One listing attempt (it may raise _Retryable) for a machine called ``name``."""
        response = self._send("GET", "")
        for item in response.json():
            if item.get("name") == name and item.get("state") != MachineState.DESTROYED:
                return Machine.model_validate(item)
        return None

    def _find_named_quietly(self, name: str) -> Machine | None:
        try:
            return self._find_named(name)
        except (_Retryable, FlyError):
            return None
