"""The worker API: the endpoints every worker calls for every chunk, as plain ASGI.

    POST /v1/claim                  → {"status": "job", "job": {...}} | "wait" | "done"
    GET  /v1/jobs/{id}/audio        the chunk's audio (header X-Lease-Token), with its
                                    format's content type (worker/audio.py)
    POST /v1/jobs/{id}/heartbeat    extend the lease
    POST /v1/jobs/{id}/result       store the transcript of the chunk (fenced; made with the
                                    episode's model, else 422)
    POST /v1/jobs/{id}/failure      give the chunk back as failed (counts an attempt)
    POST /v1/jobs/{id}/release      give the chunk back unharmed (worker stopping)

These are the coordinator's hot path (a claim → audio → result cycle per chunk), so they
skip the web framework: a FastAPI route costs about 0.25 ms of routing, dependency and
serialisation machinery per request, more than the ledger's own work. Bodies are still
validated by the wire contract's pydantic models (``worker.wire``, shared with the worker),
in one ``validate_json`` call each; errors keep
FastAPI's shape (``{"detail": ...}``, 422 with ``loc``/``type``/``msg`` and no echo of the
input). ``document`` adds these operations to the app's OpenAPI schema, so ``/docs`` and
the API fuzz cover them like the framework's own routes.

A request for a chunk whose lease the caller doesn't hold gets 409 and changes nothing.
A result is committed to the ledger, with its chunk's new state, before the answer goes
out. Nothing here leaves the event loop's thread: the ledger's statements are short, and
thread hand-offs (GIL contention) cost more than they save.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from whisperfarm.coordinator_config import LOCAL_WAIT_SECONDS, CoordinatorConfig
from whisperfarm.decoding import SENT_WHEN_SET
from whisperfarm.ledger import (
    ChunkRecord,
    LeaseLost,
    Ledger,
    UnknownChunk,
    WorkerInfo,
    holds_lease,
)
from whisperfarm.ledger import Job as LedgerJob
from whisperfarm.states import ChunkState
from worker.audio import ChunkFormat
from worker.wire import (
    WAIT_SECONDS,
    ClaimReply,
    ClaimRequest,
    FailureRequest,
    Job,
    LeaseRequest,
    ResultRequest,
    WorkerKind,
)

MAX_CHUNK_ID = 2**63 - 1
"""A job id as SQLite can hold it: a larger one is a 422, not an overflow (500)."""

# Answers ---------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200, with FastAPI's body shape: ``{"detail": detail}``."""

    def __init__(self, status: int, detail: Any, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass(frozen=True)
class Reply:
    body: bytes
    content_type: bytes = b"application/json"


def json_reply(payload: Any) -> Reply:
    """``payload`` as a compact JSON reply."""
    return Reply(json.dumps(payload, separators=(",", ":")).encode())


async def send_reply(
    send: Send, status: int, reply: Reply, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer an HTTP request with ``reply`` as plain ASGI."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", reply.content_type),
                (b"content-length", str(len(reply.body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})


def _invalid(error: ValidationError, where: str) -> ApiError:
    """422 naming what is wrong, without echoing the input back (it may hold NaN, which
    JSON can't carry, or anything else the caller sent)."""
    details = [
        {"type": e["type"], "loc": [where, *e["loc"]], "msg": e["msg"]}
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    return ApiError(422, details)


def _lost() -> ApiError:
    return ApiError(409, "lease lost: another attempt owns this chunk now")


# Routes ----------------------------------------------------------------------------------


@dataclass
class Call:
    """One request as a handler sees it."""

    config: CoordinatorConfig
    ledger: Ledger
    chunk_id: int
    body: Any
    headers: dict[bytes, bytes]

    def chunk(self) -> ChunkRecord:
        """The job's chunk, if the run serves its episode (404 otherwise, like an unknown
        id: a worker of this run has no business with other episodes' chunks)."""
        try:
            chunk = self.ledger.chunk(self.chunk_id)
        except UnknownChunk:
            raise ApiError(404, f"no job {self.chunk_id}") from None
        if chunk["episode_id"] not in self.config.scope():
            raise ApiError(404, f"no job {self.chunk_id}")
        return chunk


Handler = Callable[[Call], Awaitable[Reply]]


def _wire_job(job: LedgerJob, lease_seconds: float) -> Job:
    fields = dict(vars(job))  # flat fields: cheaper than asdict's deep copy
    options = fields.pop("options")
    return Job(
        **fields,
        # language and beam size always go, as they always have; the options added since
        # only when the episode has them (not at their defaults)
        language=options.get("language"),
        beam_size=options.get("beam_size", 5),
        **{name: options[name] for name in SENT_WHEN_SET if name in options},
        lease_seconds=lease_seconds,
        audio_url=f"/v1/jobs/{job.chunk_id}/audio",
    )


def _wait(status: str, kind: str) -> float:
    """How long a worker told to wait waits: the run's own local workers ask again
    sooner, the rest as the wire's default says (``retry_after`` is 0 with a job or done,
    as it always was)."""
    if status != "wait":
        return 0.0
    return LOCAL_WAIT_SECONDS if kind == WorkerKind.LOCAL else WAIT_SECONDS


async def claim(call: Call) -> Reply:
    config = call.config
    worker = call.body.worker
    result = call.ledger.claim(
        config.scope(),
        WorkerInfo(**worker.model_dump()),
        lease_seconds=config.lease_seconds,
        max_attempts=config.max_attempts,
        backups=config.backups,
        fleet_size=config.fleet_size,
        limit=call.body.max_jobs,
    )
    config.attached.claimed(worker.id, result.status, kind=worker.kind)
    if not result.jobs:
        reply = ClaimReply(status=result.status, retry_after=_wait(result.status, worker.kind))
    else:
        first, *more = (_wire_job(job, config.lease_seconds) for job in result.jobs)
        reply = ClaimReply(status="job", job=first)
        if more:  # set only then: a claim of one answers as it always has
            reply.more_jobs = more
    # exclude_unset: "wait" and "done" carry no job. As fast as json.dumps of the dict
    # this was (pydantic builds and writes in Rust), and the bytes are the same.
    return Reply(reply.model_dump_json(exclude_unset=True).encode())


async def audio(call: Call) -> Reply:
    chunk = call.chunk()
    token = call.headers.get(b"x-lease-token", b"")
    if not holds_lease(chunk, token):
        raise _lost()
    # Read on the event loop, not in a thread: a chunk is under 1 MB and was written
    # moments ago (so it is in the page cache), and a thread hop per request costs more in
    # GIL hand-offs than the read itself.
    path = Path(chunk["audio_path"])
    # By the file's suffix: a ledger cut by an earlier version still holds WAV chunks.
    return Reply(path.read_bytes(), ChunkFormat.for_path(path).content_type.encode())


async def heartbeat(call: Call) -> Reply:
    call.chunk()
    try:
        expires = call.ledger.heartbeat(
            call.chunk_id, call.body.lease_token, lease_seconds=call.config.lease_seconds
        )
    except LeaseLost:
        raise _lost() from None
    return json_reply({"lease_expires_in": expires - call.ledger.clock()})


async def result(call: Call) -> Reply:
    chunk = call.chunk()
    body: ResultRequest = call.body
    if chunk["state"] == ChunkState.DONE and chunk["lease_token"] == body.lease_token:
        return json_reply({"status": "duplicate"})
    if not holds_lease(chunk, body.lease_token):
        raise _lost()
    expected = call.ledger.episode(chunk["episode_id"])["model"]
    if body.result.model != expected:
        raise ApiError(
            422,
            f"result refused: it was made with model {body.result.model!r}, but episode "
            f"{chunk['episode_id']} is transcribed with {expected!r}; rebuild the worker image "
            "from this version of whisperfarm, whose workers load the model each job names",
        )
    try:
        status = call.ledger.complete(
            call.chunk_id,
            body.lease_token,
            result=body.result.model_dump_json(exclude_none=True),
            busy_seconds=body.busy_seconds,
        )
    except LeaseLost:
        raise _lost() from None
    call.config.settled.set()
    return json_reply({"status": status})


async def failure(call: Call) -> Reply:
    call.chunk()
    try:
        state = call.ledger.fail(
            call.chunk_id,
            call.body.lease_token,
            error=call.body.error,
            max_attempts=call.config.max_attempts,
        )
    except LeaseLost:
        raise _lost() from None
    call.config.settled.set()
    return json_reply({"state": state})


async def release(call: Call) -> Reply:
    call.chunk()
    try:
        call.ledger.release(call.chunk_id, call.body.lease_token)
    except LeaseLost:
        raise _lost() from None
    return json_reply({"state": ChunkState.QUEUED})


@dataclass(frozen=True)
class Route:
    method: str
    handler: Handler
    body: type[BaseModel] | None
    summary: str
    answer: str
    adapter: TypeAdapter[Any] | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        adapter = TypeAdapter(self.body) if self.body else None
        object.__setattr__(self, "adapter", adapter)  # frozen: set once, here


CLAIM = Route("POST", claim, ClaimRequest, "Claim the next job", "a job, or wait, or done")
JOB_ROUTES: dict[str, Route] = {
    "audio": Route(
        "GET", audio, None, "The job's audio", "the chunk: 16 kHz mono Ogg Opus, FLAC or WAV"
    ),
    "heartbeat": Route("POST", heartbeat, LeaseRequest, "Extend the lease", "the new expiry"),
    "result": Route("POST", result, ResultRequest, "Store the job's transcript", "stored"),
    "failure": Route("POST", failure, FailureRequest, "Give the job back as failed", "state"),
    "release": Route("POST", release, LeaseRequest, "Give the job back unharmed", "queued"),
}
BODIES: list[type[BaseModel]] = [ClaimRequest, LeaseRequest, ResultRequest, FailureRequest]


def _route(path: str) -> tuple[Route, str] | None:
    """The route for ``path`` and the raw job id in it ("" for the claim)."""
    if path == "/v1/claim":
        return CLAIM, ""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v1", "jobs"] and parts[4] in JOB_ROUTES:
        return JOB_ROUTES[parts[4]], parts[3]
    return None


def _chunk_id(raw: str) -> int:
    if raw.isascii() and raw.isdigit() and int(raw) <= MAX_CHUNK_ID:
        return int(raw)
    raise ApiError(
        422,
        [{"type": "int_parsing", "loc": ["path", "chunk_id"], "msg": "not a job id"}],
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client went away (or the guard cut it off)."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


class WorkerAPI:
    """ASGI middleware that answers the worker API's paths itself and passes every other
    request to ``app`` (the FastAPI app: status page, health, docs)."""

    def __init__(self, app: ASGIApp, *, config: CoordinatorConfig):
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _route(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        route, raw_id = found
        try:
            if scope["method"] != route.method:
                raise ApiError(405, "Method Not Allowed", ((b"allow", route.method.encode()),))
            chunk_id = _chunk_id(raw_id) if raw_id else 0
            body = None
            if route.adapter is not None:
                raw = await _read_body(receive)
                if raw is None:
                    return
                try:
                    body = route.adapter.validate_json(raw)
                except ValidationError as error:
                    raise _invalid(error, "body") from None
            call = Call(self.config, self.config.ledger(), chunk_id, body, dict(scope["headers"]))
            reply = await route.handler(call)
        except ApiError as error:
            reply = json_reply({"detail": error.detail})
            await send_reply(send, error.status, reply, error.headers)
            return
        await send_reply(send, 200, reply)


# OpenAPI ---------------------------------------------------------------------------------


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the worker API's operations and body schemas to an OpenAPI document."""
    models = [(model, cast(JsonSchemaMode, "validation")) for model in BODIES]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    paths = schema.setdefault("paths", {})
    paths["/v1/claim"] = {"post": _operation("claim", CLAIM, job=False)}
    for action, route in JOB_ROUTES.items():
        path = f"/v1/jobs/{{chunk_id}}/{action}"
        paths[path] = {route.method.lower(): _operation(action, route, job=True)}
    return schema


def _operation(name: str, route: Route, *, job: bool) -> dict[str, Any]:
    error = {"description": "see detail", "content": {"application/json": {"schema": {}}}}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"worker_{name}",
        "tags": ["worker"],
        "responses": {
            "200": {
                "description": route.answer,
                "content": (
                    {chunk_format.content_type: {"schema": {}} for chunk_format in ChunkFormat}
                    if route.body is None
                    else {"application/json": {"schema": {}}}
                ),
            },
            "422": error,
        },
    }
    if job:
        operation["parameters"] = [
            {
                "name": "chunk_id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CHUNK_ID},
            }
        ]
        operation["responses"] |= {"404": error, "409": error}
    if route.body is None:
        lease = {"name": "X-Lease-Token", "in": "header", "schema": {"type": "string"}}
        operation.setdefault("parameters", []).append(lease)
    else:
        ref = {"$ref": f"#/components/schemas/{route.body.__name__}"}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref}},
        }
    return operation
