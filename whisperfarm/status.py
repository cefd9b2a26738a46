"""What the farm is doing, read from the ledger: one pure ``snapshot()`` of dataclasses that
``whisperfarm status``, ``transcribe``'s progress display and the status page all show.

What a snapshot holds:

    runs      the runs still running; when none is, the latest one
    episodes  the episodes of those runs (``episode=``: that one, with its chunk states;
              ``episode_ids=``: those; ``all_episodes=True``: every episode in the ledger)
    workers   the workers heard from since the earliest of those runs started
    machines  the Fly machines of those runs

Money (a machine's cost, a run's spend, an episode's share of it) is ``whisperfarm.money``'s.

Speed is audio seconds transcribed per wall-clock second (× realtime) since the start of
the episode's latest run; the ETA is the audio left at that speed. A worker is *stale*
when it has not been heard from for ``stale_after`` seconds (default: one lease) while a
run is running; once every run shown has ended, a silent worker is just *gone*.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from whisperfarm.decoding import describe
from whisperfarm.episodes import resolve
from whisperfarm.errors import EpisodeNotFound
from whisperfarm.fly.store import MachineRecord, MachineStore
from whisperfarm.ledger import (
    ChunkStateRecord,
    EpisodeRecord,
    LeasedChunkRecord,
    Ledger,
    RunRecord,
    WorkerRecord,
)
from whisperfarm.ledger.chunks import kept_seconds
from whisperfarm.money import (
    episode_spend,
    machine_cost,
    machine_seconds,
    machines_cost,
    over_budget,
)
from whisperfarm.processes import PidAlive, process_alive
from whisperfarm.states import ChunkState, EpisodeState, RunState
from worker.wire import WorkerKind

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ChunkRow:
    idx: int
    start: float
    end: float
    state: str
    attempt: int
    worker_id: str | None
    lease_expires_in: float | None
    """Seconds until a leased chunk's lease runs out (negative: expired, not yet reclaimed)."""
    speech: bool
    error: str | None


@dataclass(frozen=True)
class EpisodeRow:
    id: str
    name: str
    model: str
    state: str
    """chunking, waiting, transcribing, finishing, paused, done or failed."""
    duration: float | None
    chunks_total: int
    chunks_done: int
    chunks_leased: int
    chunks_queued: int
    chunks_dead: int
    audio_total: float
    audio_done: float
    speed: float | None
    eta_seconds: float | None
    spend_usd: float | None
    """None when no run of this episode had machines."""
    error: str | None
    chunks: tuple[ChunkRow, ...] | None = None
    """Only in a snapshot narrowed to this episode."""
    options: str = ""
    """How it is transcribed: language, task, beam, words … (decoding.describe)."""

    @property
    def fraction(self) -> float:
        """How much of the audio is transcribed, 0..1."""
        if self.state == EpisodeState.DONE:
            return 1.0
        return min(1.0, self.audio_done / self.audio_total) if self.audio_total > 0 else 0.0

    @property
    def chunking(self) -> bool:
        return self.state == EpisodeState.CHUNKING


@dataclass(frozen=True)
class WorkerRow:
    id: str
    kind: str
    where: str
    """local, ``fly <machine id> (<region>)``, or the remote host."""
    host: str | None
    machine_id: str | None
    region: str | None
    current: str | None
    """``<episode name> #<chunk idx>`` while it holds a chunk."""
    current_chunk_id: int | None
    chunks_done: int
    audio_seconds: float
    last_seen: float
    heartbeat_age: float
    state: str
    """working, idle, stale or gone."""


@dataclass(frozen=True)
class MachineRow:
    id: str
    name: str
    run_id: str
    state: str
    size: str
    region: str | None
    usd_per_second: float
    created_at: float
    started_at: float | None
    uptime_seconds: float
    cost_usd: float
    error: str | None


@dataclass(frozen=True)
class RunRow:
    id: str
    backend: str
    state: str
    """running, done, failed, interrupted, crashed (a running run whose process is gone)."""
    url: str | None
    started_at: float
    ended_at: float | None
    elapsed_seconds: float
    episode_ids: tuple[str, ...]
    machines: int
    machines_running: int
    max_machines: int | None
    budget_usd: float | None
    spent_usd: float
    over_budget: bool


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: float
    focus: str | None
    runs: tuple[RunRow, ...] = ()
    episodes: tuple[EpisodeRow, ...] = ()
    workers: tuple[WorkerRow, ...] = ()
    machines: tuple[MachineRow, ...] = ()
    ledger_episodes: int = 0
    """How many episodes the whole ledger holds (for the 'nothing to show' line)."""

    @property
    def empty(self) -> bool:
        return not (self.runs or self.episodes or self.workers or self.machines)

    @property
    def running(self) -> bool:
        return any(run.state == RunState.RUNNING for run in self.runs)

    @property
    def spent_usd(self) -> float:
        return sum(run.spent_usd for run in self.runs)

    @property
    def has_spend(self) -> bool:
        return bool(self.machines) or any(e.spend_usd is not None for e in self.episodes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: times are Unix seconds, money is US dollars."""
        data = _plain(asdict(self))
        data.pop("ledger_episodes")
        return {
            "schema": SCHEMA_VERSION,
            **data,
            "running": self.running,
            "spent_usd": self.spent_usd,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _plain(value: Any) -> Any:
    """Tuples as lists, all the way down: what ``json.loads`` would give back."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def snapshot(
    ledger: Ledger,
    now: float,
    episode: str | None = None,
    *,
    episode_ids: Iterable[str] | None = None,
    all_episodes: bool = False,
    stale_after: float = 60.0,
    pid_alive: PidAlive | None = None,
) -> StatusSnapshot:
    """The state of the farm at ``now``, read from ``ledger`` in one read transaction
    (it never writes).

    ``episode`` narrows to one episode id and adds its chunk states; ``episode_ids``
    narrows to a set of episodes (the status page shows only its own run's). Without
    ``pid_alive``, a run the ledger says is running is believed; with it, a running run
    whose process is gone is shown as crashed.
    """
    with ledger.reading():
        all_runs = {run["id"]: _run_state(run, pid_alive) for run in ledger.runs()}
        shown_runs, shown_ids = _select(ledger, all_runs, episode, episode_ids, all_episodes)
        episodes = ledger.episodes_by_id(shown_ids)
        order = {episode_id: n for n, episode_id in enumerate(shown_ids)}
        episodes.sort(key=lambda e: order[e["id"]])

        # Every run these episodes were in: for speed (the latest one) and for spend.
        episode_run_pairs = ledger.episode_run_pairs(shown_ids)
        spend_run_ids = list(
            dict.fromkeys(
                [*(p["run_id"] for p in episode_run_pairs), *(r["id"] for r in shown_runs)]
            )
        )
        machines_by_run: dict[str, list[MachineRecord]] = defaultdict(list)
        for machine in MachineStore(ledger).machines_of_runs(spend_run_ids):
            machines_by_run[machine["run_id"]].append(machine)
        paying_runs = [
            run_id
            for run_id in spend_run_ids
            if any(machine_seconds(m, now) > 0 for m in machines_by_run[run_id])
        ]
        paying_pairs = ledger.run_episode_pairs(paying_runs) if paying_runs else []
        chunk_ids = list(dict.fromkeys([*shown_ids, *(p["episode_id"] for p in paying_pairs)]))
        chunks_by_episode: dict[str, list[ChunkStateRecord]] = defaultdict(list)
        for chunk in ledger.chunk_states(chunk_ids):
            chunks_by_episode[chunk["episode_id"]].append(chunk)
        workers = ledger.workers()
        leased = ledger.leased_chunks()
        shown_run_ids = [run["id"] for run in shown_runs]
        run_episode_ids: dict[str, list[str]] = defaultdict(list)
        for pair in ledger.run_episode_pairs(shown_run_ids):
            run_episode_ids[pair["run_id"]].append(pair["episode_id"])
        ledger_episodes = ledger.episode_count()

    spend = episode_spend(
        paying_pairs,
        {run_id: all_runs[run_id] for run_id in paying_runs},
        machines_by_run,
        workers,
        chunks_by_episode,
        now,
    )
    runs_of_episode: dict[str, list[RunRecord]] = defaultdict(list)
    for pair in episode_run_pairs:
        runs_of_episode[pair["episode_id"]].append(all_runs[pair["run_id"]])
    episode_rows = tuple(
        _episode_row(
            e,
            chunks_by_episode[e["id"]],
            runs_of_episode[e["id"]],
            spend.get(e["id"]),
            now,
            with_chunks=e["id"] == episode,
        )
        for e in episodes
    )
    run_rows = tuple(
        _run_row(run, run_episode_ids[run["id"]], machines_by_run[run["id"]], now)
        for run in shown_runs
    )
    any_running = any(run["state"] == RunState.RUNNING for run in shown_runs)
    since = min((run["started_at"] for run in shown_runs), default=None)
    worker_rows = tuple(
        _worker_row(w, leased, now, stale_after=stale_after, any_running=any_running)
        for w in workers
        if since is not None and w["last_seen"] >= since
    )
    machine_rows = tuple(
        _machine_row(m, now) for run_id in shown_run_ids for m in machines_by_run[run_id]
    )
    return StatusSnapshot(
        taken_at=now,
        focus=episode,
        runs=run_rows,
        episodes=episode_rows,
        workers=worker_rows,
        machines=machine_rows,
        ledger_episodes=ledger_episodes,
    )


def _select(
    ledger: Ledger,
    all_runs: dict[str, RunRecord],
    episode: str | None,
    episode_ids: Iterable[str] | None,
    all_episodes: bool,
) -> tuple[list[RunRecord], list[str]]:
    """(the runs shown, the episode ids shown): see the module docstring."""
    focus: list[str] | None = None
    if episode is not None:
        ledger.episode(episode)  # EpisodeNotFound names the fix
        focus = [episode]
    elif episode_ids is not None:
        focus = list(dict.fromkeys(episode_ids))
    if focus is not None:
        linked = {row["run_id"] for row in ledger.episode_run_pairs(focus)}
        return _current([run for run_id, run in all_runs.items() if run_id in linked]), focus
    shown_runs = _current(list(all_runs.values()))
    if all_episodes or not all_runs:
        return shown_runs, [e["id"] for e in ledger.episodes()]
    pairs = ledger.run_episode_pairs([run["id"] for run in shown_runs])
    return shown_runs, list(dict.fromkeys(pair["episode_id"] for pair in pairs))


class StatusReader:
    """Snapshots of the ledger at ``path`` for a long-lived reader (``status``, the live
    view); opens the ledger on first use and never creates one that isn't there."""

    def __init__(
        self,
        path: Path,
        *,
        stale_after: float = 60.0,
        pid_alive: PidAlive | None = process_alive,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.stale_after = stale_after
        self.pid_alive = pid_alive
        self.clock = clock
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger | None:
        if self._ledger is None and self.path.exists():
            self._ledger = Ledger(self.path)
        return self._ledger

    def resolve(self, ref: str) -> str:
        """The id of the episode ``ref`` names (see ``whisperfarm.episodes.resolve``)."""
        if self.ledger is None:
            raise EpisodeNotFound(f"no episode {ref!r}: the ledger at {self.path} is empty")
        return str(resolve(self.ledger, ref)["id"])

    def read(self, episode: str | None = None, *, all_episodes: bool = False) -> StatusSnapshot:
        now = self.clock()
        ledger = self.ledger
        if ledger is None:
            return StatusSnapshot(taken_at=now, focus=episode)
        return snapshot(
            ledger,
            now,
            episode,
            all_episodes=all_episodes,
            stale_after=self.stale_after,
            pid_alive=self.pid_alive,
        )

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


# Rows -------------------------------------------------------------------------------


def _run_state(run: RunRecord, pid_alive: PidAlive | None) -> RunRecord:
    run = run.copy()
    if run["state"] == RunState.RUNNING and pid_alive and run["pid"] and not pid_alive(run["pid"]):
        run["state"] = RunState.CRASHED
    return run


def _current(runs: list[RunRecord]) -> list[RunRecord]:
    """The running runs, or else the latest one."""
    running = [run for run in runs if run["state"] == RunState.RUNNING]
    if running:
        return running
    latest = max(runs, key=lambda run: (run["started_at"], run["id"]), default=None)
    return [latest] if latest else []


def _episode_row(
    episode: EpisodeRecord,
    chunks: list[ChunkStateRecord],
    runs: list[RunRecord],
    spend: float | None,
    now: float,
    *,
    with_chunks: bool,
) -> EpisodeRow:
    counts: dict[str, int] = dict.fromkeys(ChunkState, 0)
    audio: dict[str, float] = dict.fromkeys(ChunkState, 0.0)
    for chunk in chunks:
        counts[chunk["state"]] = counts.get(chunk["state"], 0) + 1
        audio[chunk["state"]] = audio.get(chunk["state"], 0.0) + kept_seconds(chunk)
    total = len(chunks)
    audio_total = sum(audio.values())
    if episode["state"] != EpisodeState.CHUNKING and episode["duration"]:
        audio_total = max(audio_total, float(episode["duration"]))

    latest = max(runs, key=lambda run: (run["started_at"], run["id"]), default=None)
    running = latest is not None and latest["state"] == RunState.RUNNING
    unfinished = episode["state"] not in (EpisodeState.DONE, EpisodeState.FAILED) and (
        episode["state"] == EpisodeState.CHUNKING
        or counts[ChunkState.QUEUED] + counts[ChunkState.LEASED] > 0
    )
    state = _episode_state(episode["state"], counts, total, running)

    speed = eta = None
    if latest is not None:
        since = float(latest["started_at"])
        recent = [
            c
            for c in chunks
            if c["state"] == ChunkState.DONE
            and c["claimed_at"] is not None
            and (c["finished_at"] or 0) >= since
        ]
        worked = sum(kept_seconds(c) for c in recent)
        if running and unfinished:
            until = now
        else:
            until = max((c["finished_at"] or 0.0 for c in recent), default=since)
        if worked > 0 and until > since:
            speed = worked / (until - since)
        left = audio[ChunkState.QUEUED] + audio[ChunkState.LEASED]
        if running and unfinished and speed and episode["state"] != EpisodeState.CHUNKING:
            eta = left / speed

    rows = None
    if with_chunks:
        rows = tuple(
            ChunkRow(
                idx=c["idx"],
                start=c["start"],
                end=c["end"],
                state=c["state"],
                attempt=c["attempt"],
                worker_id=c["worker_id"],
                lease_expires_in=(
                    c["lease_expires_at"] - now
                    if c["state"] == ChunkState.LEASED and c["lease_expires_at"] is not None
                    else None
                ),
                speech=bool(c["speech"]),
                error=_first_line(c["error"]),
            )
            for c in chunks
        )
    return EpisodeRow(
        id=episode["id"],
        name=episode["name"],
        model=episode["model"],
        state=state,
        duration=episode["duration"],
        chunks_total=total,
        chunks_done=counts[ChunkState.DONE],
        chunks_leased=counts[ChunkState.LEASED],
        chunks_queued=counts[ChunkState.QUEUED],
        chunks_dead=counts[ChunkState.DEAD],
        audio_total=audio_total,
        audio_done=audio[ChunkState.DONE],
        speed=speed,
        eta_seconds=eta,
        spend_usd=spend,
        error=_first_line(episode["error"]),
        chunks=rows,
        options=describe(json.loads(episode["options"] or "{}")),
    )


def _episode_state(stored: str, counts: dict[str, int], total: int, running: bool) -> str:
    """The stored state, or what status makes of it: paused (no run goes on with it),
    finishing, transcribing or waiting (for a worker)."""
    if stored in (EpisodeState.DONE, EpisodeState.FAILED):
        return stored
    if not running:
        return "paused"
    if stored == EpisodeState.CHUNKING:
        return stored
    if total and counts[ChunkState.DONE] + counts[ChunkState.DEAD] == total:
        return "finishing"  # the farm is about to stitch it (or mark it failed)
    return "transcribing" if counts[ChunkState.LEASED] else "waiting"


def _run_row(
    run: RunRecord, episode_ids: list[str], machines: list[MachineRecord], now: float
) -> RunRow:
    spent = machines_cost(machines, now)
    budget = run.get("budget")
    end = run["ended_at"] if run["state"] != RunState.RUNNING and run["ended_at"] else now
    return RunRow(
        id=run["id"],
        backend=run["backend"],
        state=run["state"],
        url=run["url"],
        started_at=run["started_at"],
        ended_at=run["ended_at"],
        elapsed_seconds=max(0.0, end - run["started_at"]),
        episode_ids=tuple(episode_ids),
        machines=len(machines),
        machines_running=sum(1 for m in machines if _machine_running(m)),
        max_machines=run.get("max_machines"),
        budget_usd=budget,
        spent_usd=spent,
        over_budget=over_budget(spent, budget),
    )


def _machine_running(machine: MachineRecord) -> bool:
    return (
        machine["started_at"] is not None
        and machine["destroyed_at"] is None
        and (machine["stopped_at"] is None or machine["stopped_at"] < machine["started_at"])
    )


def _machine_row(machine: MachineRecord, now: float) -> MachineRow:
    seconds = machine_seconds(machine, now)
    return MachineRow(
        id=machine["id"],
        name=machine["name"],
        run_id=machine["run_id"],
        state=machine["state"],
        size=machine["size"],
        region=machine["region"],
        usd_per_second=machine["usd_per_second"],
        created_at=machine["created_at"],
        started_at=machine["started_at"],
        uptime_seconds=seconds,
        cost_usd=machine_cost(machine, now),
        error=_first_line(machine["error"]),
    )


def _worker_row(
    worker: WorkerRecord,
    leased: list[LeasedChunkRecord],
    now: float,
    *,
    stale_after: float,
    any_running: bool,
) -> WorkerRow:
    held = [c for c in leased if c["worker_id"] == worker["id"]]
    chunk = next(
        (c for c in held if c["id"] == worker["current_chunk"]), held[-1] if held else None
    )
    age = max(0.0, now - worker["last_seen"])
    if age > stale_after and any_running:
        state = "stale"
    elif age > stale_after:
        state = "gone"
    else:
        state = "working" if chunk is not None else "idle"
    return WorkerRow(
        id=worker["id"],
        kind=worker["kind"],
        where=_where(worker),
        host=worker["host"],
        machine_id=worker["machine_id"],
        region=worker["region"],
        current=f"{chunk['episode_name']} #{chunk['idx']}" if chunk else None,
        current_chunk_id=chunk["id"] if chunk else None,
        chunks_done=worker["chunks_done"],
        audio_seconds=worker["audio_seconds"],
        last_seen=worker["last_seen"],
        heartbeat_age=age,
        state=state,
    )


def _where(worker: WorkerRecord) -> str:
    if worker["machine_id"]:
        region = f" ({worker['region']})" if worker["region"] else ""
        return f"fly {worker['machine_id']}{region}"
    if worker["kind"] == WorkerKind.LOCAL:
        return "local"
    return worker["host"] or worker["kind"]


def _first_line(text: str | None, limit: int = 300) -> str | None:
    if not text:
        return None
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = [
    "SCHEMA_VERSION",
    "ChunkRow",
    "EpisodeRow",
    "MachineRow",
    "RunRow",
    "StatusReader",
    "StatusSnapshot",
    "WorkerRow",
    "snapshot",
]
