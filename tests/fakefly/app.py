"""The fake Machines API as a Starlette app: Fly's routes plus a few ``/_fake`` controls.

/v1/apps/{app}/machines                   GET list, POST create
/v1/apps/{app}/machines/{id}              GET, POST update {"config", "skip_launch"?},
                                          DELETE (?force=true or ?kill=true)
/v1/apps/{app}/machines/{id}/start        POST
/v1/apps/{app}/machines/{id}/stop         POST {"signal", "timeout"}
/v1/apps/{app}/machines/{id}/wait         GET ?state=&timeout=1..60[&version=]
                                          (instance_id=, deprecated, is still accepted)
/_fake/health                             GET {"ok": true}
/_fake/state                              GET every machine ever created, with histories
/_fake/faults                             GET, POST {"capacity_409": 2, "list_lag": 3, ...}
/_fake/machines/{id}/crash                POST: the machine's process dies now
/_fake/machines/{id}/host                 POST {"status": "unreachable"|"unknown"|"ok",
                                          "config": "incomplete"|"null"|"absent"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakefly.rules import WAIT_STATES, ApiError, Faults
from tests.fakefly.state import FakeFly, Launcher

Sleep = Callable[[float], Awaitable[None]]
Handler = Callable[[Request, FakeFly], Awaitable[Any]]


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        body,
        status_code=status,
        headers={"fly-request-id": secrets.token_hex(10), **(headers or {})},
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid request body: malformed JSON") from None


def create_app(
    *,
    app: str = "whisperfarm-workers",
    token: str = "fake-token",
    region: str = "ord",
    start_latency: float = 1.0,
    stop_latency: float = 0.0,
    warm_start_latency: float | None = None,
    update_launches: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Sleep = asyncio.sleep,
    launcher: Launcher | None = None,
    faults: Faults | None = None,
    rate_limit: bool = True,
    retry_after: bool = False,
    poll_interval: float = 0.05,
    tick_interval: float | None = 0.05,
) -> Starlette:
    """The fake as an ASGI app; its :class:`FakeFly` is ``app.state.fly``.

    ``clock`` and ``sleep`` drive every delay (start latency, rate limits, /wait), so tests
    can pass a fake clock whose ``sleep`` just moves time on. ``tick_interval`` is how often
    a served app (one whose lifespan runs) advances time on its own, to launch and reap
    processes between requests.
    """
    fly = FakeFly(
        app=app,
        token=token,
        region=region,
        start_latency=start_latency,
        stop_latency=stop_latency,
        warm_start_latency=warm_start_latency,
        update_launches=update_launches,
        clock=clock,
        launcher=launcher,
        faults=faults,
        rate_limit=rate_limit,
        retry_after=retry_after,
    )

    def api(action: str, handler: Handler, *, per_machine: bool = True) -> Callable:
        async def endpoint(request: Request) -> Response:
            params = request.path_params
            key = params.get("machine_id", "") if per_machine else params["app"]
            try:
                fly.admit(request.headers.get("authorization"), params["app"], action, key)
                return _json_response(200, await handler(request, fly))
            except ApiError as error:
                return _json_response(error.status, error.body(), error.headers)

        return endpoint

    async def list_or_create(request: Request, fly: FakeFly) -> Any:
        if request.method == "POST":
            return fly.create(await _body(request))
        return fly.list(dict(request.query_params))

    async def get(request: Request, fly: FakeFly) -> Any:
        return fly.get(request.path_params["machine_id"])

    async def destroy(request: Request, fly: FakeFly) -> Any:
        query = request.query_params
        force = any(query.get(k, "").lower() in ("true", "1") for k in ("force", "kill"))
        return fly.destroy(request.path_params["machine_id"], force=force)

    async def update(request: Request, fly: FakeFly) -> Any:
        return fly.update(request.path_params["machine_id"], await _body(request))

    async def start(request: Request, fly: FakeFly) -> Any:
        return fly.start(request.path_params["machine_id"])

    async def stop(request: Request, fly: FakeFly) -> Any:
        return fly.stop(request.path_params["machine_id"], await _body(request))

    async def wait(request: Request, fly: FakeFly) -> Any:
        machine = fly.machine(request.path_params["machine_id"])
        state = request.query_params.get("state", "started")
        if state not in WAIT_STATES:
            raise ApiError(400, f"invalid state {state!r}: one of {', '.join(sorted(WAIT_STATES))}")
        try:
            timeout = int(request.query_params.get("timeout", "60"))
        except ValueError:
            timeout = 0
        if not 1 <= timeout <= 60:
            raise ApiError(400, "invalid timeout: must be between 1 and 60 seconds")
        for name in ("version", "instance_id"):
            if name in request.query_params:
                fly.wait_params[name] += 1
        since = len(machine.history)
        deadline = fly.clock() + timeout
        while True:
            fly.advance()
            if fly.reached(machine, state, since):
                return {"ok": True}
            remaining = deadline - fly.clock()
            if remaining <= 0:
                raise ApiError(
                    408,
                    f"machine failed to reach desired state, {state}, currently {machine.state}",
                )
            await sleep(min(poll_interval, remaining))

    by_method = {
        "GET": api("get", get),
        "POST": api("update", update),
        "DELETE": api("destroy", destroy),
    }

    async def machine_endpoint(request: Request) -> Response:
        return await by_method[request.method](request)

    async def state_endpoint(request: Request) -> Response:
        return JSONResponse(fly.snapshot())

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def faults_endpoint(request: Request) -> Response:
        try:
            if request.method == "POST":
                changes = await _body(request)
                if not isinstance(changes, dict):
                    raise ApiError(400, "expected a JSON object of faults")
                fly.faults.update(changes)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse(asdict(fly.faults))

    async def crash(request: Request) -> Response:
        try:
            fly.advance()
            fly.crash(request.path_params["machine_id"])
            fly.advance()
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse({"ok": True})

    async def host(request: Request) -> Response:
        try:
            body = await _body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "expected a JSON object")
            fly.set_host(
                request.path_params["machine_id"],
                str(body.get("status", "unreachable")),
                str(body.get("config", "incomplete")),
            )
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        ticker = asyncio.create_task(_tick(fly, tick_interval)) if tick_interval else None
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            fly.shutdown()

    base = "/v1/apps/{app}/machines"
    routes = [
        Route(base, api("list", list_or_create, per_machine=False), methods=["GET"]),
        Route(base, api("create", list_or_create, per_machine=False), methods=["POST"]),
        Route(base + "/{machine_id}", machine_endpoint, methods=["GET", "POST", "DELETE"]),
        Route(base + "/{machine_id}/start", api("start", start), methods=["POST"]),
        Route(base + "/{machine_id}/stop", api("stop", stop), methods=["POST"]),
        Route(base + "/{machine_id}/wait", api("wait", wait), methods=["GET"]),
        Route("/_fake/health", health, methods=["GET"]),
        Route("/_fake/state", state_endpoint, methods=["GET"]),
        Route("/_fake/faults", faults_endpoint, methods=["GET", "POST"]),
        Route("/_fake/machines/{machine_id}/crash", crash, methods=["POST"]),
        Route("/_fake/machines/{machine_id}/host", host, methods=["POST"]),
    ]
    asgi = Starlette(routes=routes, lifespan=lifespan)
    asgi.state.fly = fly
    return asgi


async def _tick(fly: FakeFly, interval: float) -> None:
    while True:
        fly.advance()
        await asyncio.sleep(interval)
