"""Money: what machine time has cost. The one home of every spend figure that ``status``,
``transcribe``'s console, ``cost``, the budget and the ledger's record of a run show.

A machine costs ``usd_per_second`` from ``started_at`` until it was first seen stopped or
destroyed (until ``now`` while it runs). A run's spend is the sum over its machines; an
episode's spend is its share of every run that included it, split among that run's
episodes by the audio its machines transcribed for each (by audio length while they have
transcribed nothing yet). Prices themselves are ``whisperfarm.fly.pricing``'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from whisperfarm.ledger.chunks import kept_seconds
from whisperfarm.ledger.rows import ChunkStateRecord, RunEpisodeRecord, RunRecord, WorkerRecord
from whisperfarm.states import ChunkState


def machine_seconds(row: Mapping[str, Any], now: float) -> float:
    """Billed seconds: from started (``record_machine`` sets it at creation, to err on the
    side of the budget) until first seen stopped or destroyed, or until ``now`` while it
    runs."""
    started = row["started_at"]
    if started is None:
        return 0.0
    ends = [t for t in (row["stopped_at"], row["destroyed_at"]) if t is not None and t >= started]
    return max(0.0, min([now, *ends]) - started)


def machine_cost(row: Mapping[str, Any], now: float) -> float:
    """Dollars one machine row has cost by ``now``: the one definition of spend."""
    return machine_seconds(row, now) * float(row["usd_per_second"])


def machines_cost(rows: Iterable[Mapping[str, Any]], now: float) -> float:
    """Dollars these machine rows (a run's) have cost by ``now``."""
    return sum(machine_cost(row, now) for row in rows)


def over_budget(spent: float, budget: float | None) -> bool:
    return budget is not None and spent > budget


def episode_spend(
    pairs: Sequence[RunEpisodeRecord],
    runs: Mapping[str, RunRecord],
    machines_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
    workers: Sequence[WorkerRecord],
    chunks_by_episode: Mapping[str, Sequence[ChunkStateRecord]],
    now: float,
) -> dict[str, float]:
    """Each run's machine cost shared among its episodes (see the module docstring):
    ``pairs`` are the runs' (run_id, episode_id) rows."""
    machine_of = {w["id"]: w["machine_id"] for w in workers if w["machine_id"]}
    episodes_of: dict[str, list[str]] = defaultdict(list)
    for pair in pairs:
        episodes_of[pair["run_id"]].append(pair["episode_id"])
    spend: dict[str, float] = defaultdict(float)
    for run_id, run in runs.items():
        machines = machines_by_run.get(run_id, [])
        cost = machines_cost(machines, now)
        ids = {m["id"] for m in machines}
        start, end = run["started_at"], run["ended_at"] or now
        weights = {
            episode_id: sum(
                kept_seconds(c)
                for c in chunks_by_episode.get(episode_id, [])
                if c["state"] == ChunkState.DONE
                and machine_of.get(c["worker_id"] or "") in ids
                and start <= (c["finished_at"] or 0) <= end
            )
            for episode_id in episodes_of[run_id]
        }
        if not any(weights.values()):
            weights = {
                episode_id: sum(kept_seconds(c) for c in chunks_by_episode.get(episode_id, []))
                or 1.0
                for episode_id in episodes_of[run_id]
            }
        total = sum(weights.values())
        for episode_id, weight in weights.items():
            spend[episode_id] += cost * weight / total if total else 0.0
    return dict(spend)
