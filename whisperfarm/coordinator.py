"""The coordinator: a small HTTP API (FastAPI) that hands chunk jobs to workers.

    POST /v1/claim                  → {"status": "job", "job": {...}} | "wait" | "done"
    GET  /v1/jobs/{id}/audio        the chunk's WAV (header X-Lease-Token)
    POST /v1/jobs/{id}/heartbeat    extend the lease
    POST /v1/jobs/{id}/result       store the transcript of the chunk (fenced)
    POST /v1/jobs/{id}/failure      give the chunk back as failed (counts an attempt)
    POST /v1/jobs/{id}/release      give the chunk back unharmed (worker stopping)
    GET  /v1/health                 liveness, no secrets

Every endpoint needs ``Authorization: Bearer <run token>``. A request for a chunk whose
lease the caller doesn't hold gets 409 and changes nothing. Results are written to a file
and committed to the ledger before the answer goes out.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from whisperfarm.ledger import Clock, LeaseLost, Ledger, UnknownChunk, WorkerInfo

MAX_BODY_BYTES = 16 * 1024 * 1024


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


class WordModel(BaseModel):
    start: float
    end: float
    word: str = Field(max_length=1000)
    probability: float | None = None


class SegmentModel(BaseModel):
    start: float
    end: float
    text: str = Field(max_length=20_000)
    words: list[WordModel] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    @field_validator("start", "end")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("times must be finite and not negative")
        return value


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


class BodyLimit(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": "request body too large"}, status_code=413)
        return await call_next(request)


def create_app(config: CoordinatorConfig) -> FastAPI:
    expected = f"Bearer {config.token}".encode()

    def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="whisperfarm coordinator", version="1", dependencies=[Depends(authorized)])
    app.add_middleware(BodyLimit)

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

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/claim")
    def claim(body: ClaimRequest) -> dict[str, Any]:
        ledger = config.ledger()
        result = ledger.claim(
            config.scope(),
            WorkerInfo(**body.worker.model_dump()),
            lease_seconds=config.lease_seconds,
            max_attempts=config.max_attempts,
        )
        if result.job is None:
            return {"status": result.status, "retry_after": result.retry_after}
        job = asdict(result.job)
        options = job.pop("options")
        job.update(
            language=options.get("language"),
            beam_size=options.get("beam_size", 5),
            lease_seconds=config.lease_seconds,
            audio_url=f"/v1/jobs/{job['chunk_id']}/audio",
        )
        return {"status": "job", "job": job}

    @app.get("/v1/jobs/{chunk_id}/audio")
    def audio(chunk_id: int, request: Request) -> FileResponse:
        ledger = config.ledger()
        chunk = in_scope(ledger, chunk_id)
        token = request.headers.get("x-lease-token", "")
        if chunk["state"] != "leased" or not secrets.compare_digest(
            (chunk["lease_token"] or "").encode(), token.encode()
        ):
            raise lost()
        return FileResponse(chunk["audio_path"], media_type="audio/wav")

    @app.post("/v1/jobs/{chunk_id}/heartbeat")
    def heartbeat(chunk_id: int, body: LeaseRequest) -> dict[str, float]:
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
    def result(chunk_id: int, body: ResultRequest) -> dict[str, str]:
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
        _write_atomic(path, json.dumps(body.result.model_dump(exclude_none=True)))
        try:
            status = ledger.complete(
                chunk_id, body.lease_token, result_path=str(path), busy_seconds=body.busy_seconds
            )
        except LeaseLost:
            path.unlink(missing_ok=True)
            raise lost() from None
        return {"status": status}

    @app.post("/v1/jobs/{chunk_id}/failure")
    def failure(chunk_id: int, body: FailureRequest) -> dict[str, str]:
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
    def release(chunk_id: int, body: LeaseRequest) -> dict[str, str]:
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
