"""The ledger's rows as its stores return them: one ``TypedDict`` per table (or per read
that selects part of one), so a caller's ``row["state"]`` is checked against the columns
the migrations made, and the call sites stay the ``row["x"]`` they always were.

TypedDicts, not dataclasses: the rows are the dicts ``Store._rows`` builds (no copy per
row on the status page's hot path), they go to JSON as they are (``status --json``), and
callers that add a key or two for a view (``{**run, "state": ...}``) keep working. A state
column is typed ``str``, as SQLite gives it back; it compares equal to its StrEnum member
(``whisperfarm.states``). The Fly layer's rows (``MachineRecord``) live with its store.
"""

from __future__ import annotations

from typing import TypedDict

JsonValue = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None
"""Whatever JSON text decodes to: what the ledger gives back for a stored body it does not
check (a chunk's result, written by the coordinator or read in from an old result file)."""


class EpisodeRecord(TypedDict):
    """An ``episodes`` row: one recording transcribed with one model."""

    id: str
    name: str
    source: str
    content_hash: str
    model: str
    options: str  # JSON text: the transcription options (language, beam_size …)
    options_key: str  # what the episode's results are stored under (whisperfarm/decoding.py)
    duration: float | None  # known once chunking finished (or declared up front)
    state: str  # an EpisodeState
    error: str | None
    chunk_count: int | None  # set when chunking finished
    created_at: float
    updated_at: float
    finished_at: float | None


class ChunkStateRecord(TypedDict):
    """A chunk without its files and lease token (``chunk_states``): what status, cost
    and the status page read."""

    id: int
    episode_id: str
    idx: int
    start: float  # the audio sent to the worker, on the episode timeline
    end: float
    keep_start: float  # the part of the timeline this chunk owns in the transcript
    keep_end: float
    speech: int  # 0: cut with no speech in it, done without a worker
    state: str  # a ChunkState
    attempt: int
    worker_id: str | None
    lease_expires_at: float | None
    claimed_at: float | None
    finished_at: float | None
    error: str | None


class ChunkRecord(ChunkStateRecord):
    """A ``chunks`` row."""

    words: int  # 1: its words must be timed (an overlapped seam, gaps without speech)
    audio_path: str
    lease_token: str | None
    result_path: str | None  # only in ledgers from before results moved into the ledger
    speech_spans: str | None  # JSON text: [[start, end], …] where speech was heard
    backup_token: str | None  # a second lease on a straggler (ledger.queue), if any
    backup_worker_id: str | None
    backup_expires_at: float | None


class LeasedChunkRecord(TypedDict):
    """A chunk under lease now, with its episode's name (``leased_chunks``)."""

    id: int
    episode_id: str
    idx: int
    worker_id: str | None
    lease_expires_at: float | None
    episode_name: str


class RunRecord(TypedDict):
    """A ``runs`` row: one ``transcribe``/``serve``/``machines check``."""

    id: str
    backend: str
    url: str | None
    pid: int | None
    budget: float | None
    started_at: float
    ended_at: float | None
    state: str  # a RunState
    max_machines: int | None
    spent: float


class RunEpisodeRecord(TypedDict):
    """A ``run_episodes`` row: an episode a run took on."""

    run_id: str
    episode_id: str


class WorkerRecord(TypedDict):
    """A ``workers`` row: a worker the coordinator has heard from, and what it did."""

    id: str
    kind: str  # local, remote, fly
    host: str | None
    machine_id: str | None
    region: str | None
    threads: int | None
    first_seen: float
    last_seen: float
    current_chunk: int | None
    chunks_done: int
    audio_seconds: float
    busy_seconds: float


class MeasuredSpeed(TypedDict):
    """A measured speed per model, compute type and kind of worker, as folded in."""

    model: str
    compute_type: str
    kind: str
    per_cpu: float  # times realtime per CPU
    audio_seconds: float  # the audio it was measured over
    runs: int


class CalibrationRecord(MeasuredSpeed):
    """A ``calibrations`` row."""

    updated_at: float
