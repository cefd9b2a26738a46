"""The wire contract between the coordinator and its workers: one pydantic model per
message, imported by both sides (the coordinator's ``whisperfarm.worker_api`` and the
worker's ``client`` and ``loop``). It lives in the worker package because the worker image
installs only ``worker/`` and requirements/worker.in; the coordinator imports it from here.

    worker → coordinator   ClaimRequest (a WorkerModel), LeaseRequest (heartbeat, release),
                           ResultRequest (a ResultModel of SegmentModels of WordModels),
                           FailureRequest
    coordinator → worker   ClaimReply: "job" with a Job (and more_jobs when a claim asks for
                           several), or "wait"/"done" with retry_after

The field names and the JSON they make are the API: old workers and coordinators still
talk to new ones. Messages are written with ``exclude_unset`` so that a message carries
exactly the fields its sender gave, as the hand-built dicts did before these models. The
request bodies' names appear in the coordinator's OpenAPI schema (/docs, the API fuzz).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_RESULT_SECONDS = 86_400.0
"""Times in a result are seconds into one chunk (under half a minute): anything past a day
is garbage, and a huge one overflows the srt/vtt/tsv writers when the episode is stitched."""


# Worker → coordinator --------------------------------------------------------------------


class WorkerKind(StrEnum):
    """Where a worker runs, as its claims say: one of the run's own local processes, a
    Fly machine the run started, or a worker that joined from anywhere. The wire carries
    it as a string (a joined worker may name its own kind)."""

    LOCAL = "local"
    FLY = "fly"
    REMOTE = "remote"


WAIT_SECONDS = 1.0
"""How soon a worker told to wait (chunks still being cut, or all leased) asks again: a
hundred machines asking five times a second would be five hundred claims a second for
nothing. The run's own local workers ask sooner (whisperfarm.worker_api)."""


class WorkerModel(BaseModel):
    """Who is claiming: shown in status and kept in the ledger's workers table."""

    id: str = Field(min_length=1, max_length=200)
    kind: str = Field(WorkerKind.REMOTE, max_length=20)
    host: str | None = Field(None, max_length=200)
    machine_id: str | None = Field(None, max_length=100)
    region: str | None = Field(None, max_length=20)
    threads: int | None = Field(None, ge=1, le=1024)


MAX_JOBS_PER_CLAIM = 64


class ClaimRequest(BaseModel):
    worker: WorkerModel
    max_jobs: int = Field(1, ge=1, le=MAX_JOBS_PER_CLAIM)
    """How many chunks the worker takes at once (its batch); a claim may get fewer."""


class LeaseRequest(BaseModel):
    lease_token: str = Field(min_length=1, max_length=200)


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
    """The transcript of one chunk, as the worker's transcriber made it."""

    segments: list[SegmentModel] = Field(max_length=10_000)
    language: str | None = Field(None, max_length=20)
    duration: float | None = None
    model: str = Field(min_length=1, max_length=500)
    """The model that produced the result: it must be the episode's (else 422)."""
    elapsed: float | None = None


class ResultRequest(LeaseRequest):
    result: ResultModel
    busy_seconds: float = Field(0.0, ge=0, le=86_400)


class FailureRequest(LeaseRequest):
    error: str = Field(max_length=10_000)


# Coordinator → worker --------------------------------------------------------------------


class Lease(BaseModel):
    """What names a job in the calls that follow a claim (audio, heartbeat, result …)."""

    chunk_id: int
    lease_token: str


ComputeType = Literal[
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
]
"""CTranslate2's compute types: how a model's weights are loaded (it falls back to the
nearest one a device supports)."""


class DecodeOptions(BaseModel):
    """How a chunk is decoded (faster-whisper's ``transcribe`` arguments), as a job carries
    them. The defaults are what a worker assumes when a coordinator leaves one out: a
    coordinator sends the options added with the whisper CLIs' flags (``task`` on) only when
    an episode sets them (whisperfarm/decoding.py)."""

    model_config = ConfigDict(extra="ignore")

    word_timestamps: bool = False
    language: str | None = None
    beam_size: int = 5
    task: Literal["transcribe", "translate"] = "transcribe"
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperature: float | None = None
    """The first temperature, raised by 0.2 up to 1.0 on a failed window; None:
    faster-whisper's default (0.0, 0.2 … 1.0)."""
    vad_filter: bool = False
    compute_type: str | None = None
    """How the worker loads the model (CTranslate2's compute type): part of what a result
    is, so the episode's; None (a coordinator from before): the worker's own setting."""


class Job(DecodeOptions):
    """One chunk to transcribe, as a claim hands it out, with its decoding options. The
    defaults are what a worker assumes when a coordinator leaves a field out; fields a
    newer coordinator adds are ignored (so a worker older than an option decodes without
    it)."""

    model_config = ConfigDict(extra="ignore")

    chunk_id: int
    episode_id: str
    idx: int
    start: float
    end: float
    attempt: int
    lease_token: str
    lease_expires_at: float
    model: str
    lease_seconds: float
    audio_url: str


class ClaimReply(BaseModel):
    """``job`` with a Job (and ``more_jobs`` when the claim asked for several and got
    them, each under its own lease); ``wait`` (ask again after ``retry_after`` seconds)
    or ``done`` (no work left) without one. A worker that asks for one job, as workers
    before batched claims did, gets exactly the answer they read."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["job", "wait", "done"]
    job: Job | None = None
    more_jobs: list[Job] | None = None
    retry_after: float = WAIT_SECONDS

    @property
    def jobs(self) -> list[Job]:
        """Every job claimed, the longest first."""
        return ([self.job] if self.job is not None else []) + (self.more_jobs or [])
