"""The coordinator: a small HTTP API (FastAPI) that hands chunk jobs to workers.

    POST /v1/claim                  → {"status": "job", "job": {...}} | "wait" | "done"
    GET  /v1/jobs/{id}/audio        the chunk's WAV (header X-Lease-Token)
    POST /v1/jobs/{id}/heartbeat    extend the lease
    POST /v1/jobs/{id}/result       store the transcript of the chunk (fenced)
    POST /v1/jobs/{id}/failure      give the chunk back as failed (counts an attempt)
    POST /v1/jobs/{id}/release      give the chunk back unharmed (worker stopping)
    GET  /v1/health                 liveness, no secrets
    GET  /  and  /v1/status …       the read-only status page (see whisperfarm.page)

Every endpoint needs ``Authorization: Bearer <run token>``; the status page at ``/`` alone
also takes it as ``?token=``. A request for a chunk whose lease the caller doesn't hold
gets 409 and changes nothing. Results are written to a file and committed to the ledger
before the answer goes out.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisperfarm.ledger import Clock, LeaseLost, Ledger, UnknownChunk, WorkerInfo
from whisperfarm.page import QUERY_TOKEN_PATHS, status_router

MAX_BODY_BYTES = 16 * 1024 * 1024

ChunkId = Annotated[int, PathParam(ge=0, le=2**63 - 1)]
"""A job id as SQLite can hold it: a larger one is a 422, not an overflow (500)."""


@dataclass
class CoordinatorConfig:
    ledger_path: Path
    token: str
    scope: Callable[[], list[str]]
    episodes_dir: Path
    lease_seconds: float = 60.0
    max_attempts: int = 3
    clock: Clock | None = None
    _ledgers: list[Ledger] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ledger(self) -> Ledger:
        """One ledger connection per server thread."""
        ledger = getattr(self._local, "ledger", None)
        if ledger is None:
            kwargs = {"clock": self.clock} if self.clock else {}
            ledger = Ledger(self.ledger_path, **kwargs)
            self._local.ledger = ledger
            with self._lock:
                self._ledgers.append(ledger)
        return ledger

    def close(self) -> None:
        with self._lock:
            for ledger in self._ledgers:
                ledger.close()
            self._ledgers.clear()


class WorkerModel(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    kind: str = Field("remote", max_length=20)
    host: str | None = Field(None, max_length=200)
    machine_id: str | None = Field(None, max_length=100)
    region: str | None = Field(None, max_length=20)
    threads: int | None = Field(None, ge=1, le=1024)


class ClaimRequest(BaseModel):
    worker: WorkerModel


class LeaseRequest(BaseModel):
    lease_token: str = Field(min_length=1, max_length=200)


MAX_RESULT_SECONDS = 86_400.0
"""Times in a result are seconds into one chunk (under half a minute): anything past a day
is garbage, and a huge one overflows the srt/vtt/tsv writers when the episode is stitched."""


def _time() -> Any:
    """A time in a result: finite, not negative, at most MAX_RESULT_SECONDS (and so
    documented in the OpenAPI schema)."""
    return Field(ge=0, le=MAX_RESULT_SECONDS, allow_inf_nan=False)


class WordModel(BaseModel):
    start: float = _time()
    end: float = _time()
    word: str = Field(max_length=1000)
    probability: float | None = Field(None, ge=0, le=1)


class SegmentModel(BaseModel):
    start: float = _time()
    end: float = _time()
    text: str = Field(max_length=20_000)
    words: list[WordModel] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None


class ResultModel(BaseModel):
    segments: list[SegmentModel] = Field(max_length=10_000)
    language: str | None = Field(None, max_length=20)
    duration: float | None = None
    model: str | None = Field(None, max_length=500)
    elapsed: float | None = None


class ResultRequest(LeaseRequest):
    result: ResultModel
    busy_seconds: float = Field(0.0, ge=0, le=86_400)


class FailureRequest(LeaseRequest):
    error: str = Field(max_length=10_000)


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
            response = JSONResponse(
                {"detail": "missing or wrong token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
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
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if too_large:
            await _too_large(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"detail": "request body too large"}, status_code=413)
    await response(scope, receive, send)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 naming what is wrong, without echoing the input back (it may hold NaN, which
    JSON can't carry, or anything else the caller sent)."""
    assert isinstance(error, RequestValidationError)
    details = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        for e in error.errors()
    ]
    return JSONResponse({"detail": details}, status_code=422)


def create_app(config: CoordinatorConfig) -> FastAPI:
    app = FastAPI(title="whisperfarm coordinator", version="1")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(Guard, token=config.token)
    app.include_router(status_router(config))

    def in_scope(ledger: Ledger, chunk_id: int) -> dict[str, Any]:
        try:
            chunk = ledger.chunk(chunk_id)
        except UnknownChunk:
            raise HTTPException(404, f"no job {chunk_id}") from None
        if chunk["episode_id"] not in config.scope():
            raise HTTPException(404, f"no job {chunk_id}")
        return chunk

    def lost() -> HTTPException:
        return HTTPException(409, "lease lost: another attempt owns this chunk now")

    # The worker API's endpoints are async: their ledger calls are short SQLite statements
    # on the event loop's own connection, so no request waits for a threadpool thread, and
    # only file I/O (chunk audio, result files with their fsync) goes to threads.

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/claim")
    async def claim(body: ClaimRequest) -> dict[str, Any]:
        ledger = config.ledger()
        result = ledger.claim(
            config.scope(),
            WorkerInfo(**body.worker.model_dump()),
            lease_seconds=config.lease_seconds,
            max_attempts=config.max_attempts,
        )
        if result.job is None:
            return {"status": result.status, "retry_after": result.retry_after}
        job = dict(vars(result.job))  # flat fields: cheaper than asdict's deep copy
        options = job.pop("options")
        job.update(
            language=options.get("language"),
            beam_size=options.get("beam_size", 5),
            lease_seconds=config.lease_seconds,
            audio_url=f"/v1/jobs/{job['chunk_id']}/audio",
        )
        return {"status": "job", "job": job}

    @app.get("/v1/jobs/{chunk_id}/audio")
    async def audio(chunk_id: ChunkId, request: Request) -> Response:
        ledger = config.ledger()
        chunk = in_scope(ledger, chunk_id)
        token = request.headers.get("x-lease-token", "")
        if chunk["state"] != "leased" or not secrets.compare_digest(
            (chunk["lease_token"] or "").encode(), token.encode()
        ):
            raise lost()
        # One read in a thread (a chunk is under 1 MB) rather than FileResponse's thread
        # hop per 64 KB block.
        data = await run_in_threadpool(Path(chunk["audio_path"]).read_bytes)
        return Response(data, media_type="audio/wav")

    @app.post("/v1/jobs/{chunk_id}/heartbeat")
    async def heartbeat(chunk_id: ChunkId, body: LeaseRequest) -> dict[str, float]:
        ledger = config.ledger()
        in_scope(ledger, chunk_id)
        try:
            expires = ledger.heartbeat(
                chunk_id, body.lease_token, lease_seconds=config.lease_seconds
            )
        except LeaseLost:
            raise lost() from None
        return {"lease_expires_in": expires - ledger.clock()}

    @app.post("/v1/jobs/{chunk_id}/result")
    async def result(chunk_id: ChunkId, body: ResultRequest) -> dict[str, str]:
        ledger = config.ledger()
        chunk = in_scope(ledger, chunk_id)
        if chunk["state"] == "done" and chunk["lease_token"] == body.lease_token:
            return {"status": "duplicate"}
        if chunk["state"] != "leased" or chunk["lease_token"] != body.lease_token:
            raise lost()
        path = (
            config.episodes_dir
            / chunk["episode_id"]
            / "results"
            / f"{chunk['idx']:05d}-{chunk['attempt']}.json"
        )
        await run_in_threadpool(
            _write_atomic, path, json.dumps(body.result.model_dump(exclude_none=True))
        )
        try:
            status = ledger.complete(
                chunk_id, body.lease_token, result_path=str(path), busy_seconds=body.busy_seconds
            )
        except LeaseLost:
            path.unlink(missing_ok=True)
            raise lost() from None
        return {"status": status}

    @app.post("/v1/jobs/{chunk_id}/failure")
    async def failure(chunk_id: ChunkId, body: FailureRequest) -> dict[str, str]:
        ledger = config.ledger()
        in_scope(ledger, chunk_id)
        try:
            state = ledger.fail(
                chunk_id, body.lease_token, error=body.error, max_attempts=config.max_attempts
            )
        except LeaseLost:
            raise lost() from None
        return {"state": state}

    @app.post("/v1/jobs/{chunk_id}/release")
    async def release(chunk_id: ChunkId, body: LeaseRequest) -> dict[str, str]:
        ledger = config.ledger()
        in_scope(ledger, chunk_id)
        try:
            ledger.release(chunk_id, body.lease_token)
        except LeaseLost:
            raise lost() from None
        return {"state": "queued"}

    return app


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{secrets.token_hex(4)}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
