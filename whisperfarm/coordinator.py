"""The coordinator: the HTTP API that hands chunk jobs to workers, and the status page.

    POST /v1/claim, GET /v1/jobs/{id}/audio, POST /v1/jobs/{id}/{heartbeat,result,…}
                                    the worker API (see whisperfarm.worker_api)
    GET  /v1/health                 liveness, no secrets
    GET  /  and  /v1/status …       the read-only status page (see whisperfarm.page)
    GET  /docs, /openapi.json       the API's description

Every endpoint needs ``Authorization: Bearer <run token>``; the status page at ``/`` alone
also takes it as ``?token=``. The guard in front of everything checks the token before a
body is read and caps bodies at MAX_BODY_BYTES. The worker API answers its own paths as
plain ASGI (it is the hot path); FastAPI serves the rest, and is imported and built at
the first request for the rest: a run's workers never need it, and its import (about
0.2 s of CPU) would delay a local run's first claim.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisperfarm import worker_api
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.worker_api import json_reply, send_reply

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 16 * 1024 * 1024
QUERY_TOKEN_PATHS = frozenset({"/"})
"""Paths that accept the run token as ``?token=``: the status page alone, never the API."""


class Guard:
    """Plain ASGI middleware in front of everything: a request without the run's token is
    refused (401) before its body is read, and a body is read no further than
    ``max_body`` bytes (413), whether it declares its length or comes chunked."""

    def __init__(self, app: ASGIApp, *, token: str, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.token = token.encode()
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        if secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
            return True
        # The status page alone may take the token from its URL (a browser can't send a
        # header when following a link); the page then sends it as a header to the API.
        if scope["method"] in ("GET", "HEAD") and scope["path"] in QUERY_TOKEN_PATHS:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0].encode()
            return secrets.compare_digest(given, self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            reply = json_reply({"detail": "missing or wrong token"})
            await send_reply(send, 401, reply, ((b"www-authenticate", b"Bearer"),))
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(scope, receive, send)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # The app is told the client left, so it acts on no part of the body.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:  # else: the app's own complaint about the cut-off body
                raise
        if too_large:
            await _too_large(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    await send_reply(send, 413, json_reply({"detail": "request body too large"}))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 naming what is wrong, without echoing the input back (it may hold NaN, which
    JSON can't carry, or anything else the caller sent)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    assert isinstance(error, RequestValidationError)
    details = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        for e in error.errors()
    ]
    return JSONResponse({"detail": details}, status_code=422)


class Coordinator:
    """The whole coordinator as one ASGI app: the guard, then the worker API, then FastAPI
    (status page, health, docs). The first two are plain ASGI in front of the framework,
    so a worker's request never pays for FastAPI's per-request layers (error and telemetry
    middleware, routing, body limits)."""

    def __init__(self, config: CoordinatorConfig):
        self.config = config
        self._api: FastAPI | None = None
        self.app = Guard(worker_api.WorkerAPI(self._pages, config=config), token=config.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def api(self) -> FastAPI:
        """The FastAPI app of everything but the worker API, built at its first use."""
        if self._api is None:
            self._api = _pages_app(self.config)
        return self._api

    async def _pages(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.api(scope, receive, send)

    @property
    def routes(self) -> list[Any]:
        """FastAPI's routes (the worker API's paths are in ``openapi()``)."""
        return self.api.routes

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of every operation, the worker API's included."""
        return self.api.openapi()


def create_app(config: CoordinatorConfig) -> Coordinator:
    return Coordinator(config)


def _pages_app(config: CoordinatorConfig) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi

    from whisperfarm.page import status_router

    app = FastAPI(title="whisperfarm coordinator", version="1")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(status_router(config))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = worker_api.document(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
