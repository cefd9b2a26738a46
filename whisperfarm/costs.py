"""What runs and episodes cost: machine time × price, from the ledger.

Spend and a run's share per episode come from ``whisperfarm.money``, as ``status``'s do,
so the two commands always agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from whisperfarm.fly.store import MachineRecord, MachineStore
from whisperfarm.ledger import ChunkStateRecord, Ledger
from whisperfarm.money import episode_spend, machine_seconds, machines_cost


@dataclass
class RunCost:
    run_id: str
    backend: str
    started_at: float
    state: str
    machines: int
    machine_seconds: float
    spent: float
    budget: float | None
    episodes: dict[str, float] = field(default_factory=dict)  # episode name → dollars


def cost_report(ledger: Ledger) -> list[RunCost]:
    """Each run's spend, and its share per episode."""
    now = ledger.clock()
    report = []
    with ledger.reading():
        runs = ledger.runs()
        workers = ledger.workers()
        machines_by_run: dict[str, list[MachineRecord]] = defaultdict(list)
        for machine in MachineStore(ledger).machines_of_runs([r["id"] for r in runs]):
            machines_by_run[machine["run_id"]].append(machine)
        pairs = ledger.run_episode_pairs([r["id"] for r in runs])
        episode_ids = list(dict.fromkeys(p["episode_id"] for p in pairs))
        names = {e["id"]: e["name"] for e in ledger.episodes_by_id(episode_ids)}
        chunks_by_episode: dict[str, list[ChunkStateRecord]] = defaultdict(list)
        for chunk in ledger.chunk_states(episode_ids):
            chunks_by_episode[chunk["episode_id"]].append(chunk)
    for run in runs:
        machines = machines_by_run[run["id"]]
        item = RunCost(
            run["id"],
            run["backend"],
            run["started_at"],
            run["state"],
            len(machines),
            sum(machine_seconds(m, now) for m in machines),
            machines_cost(machines, now),
            run["budget"],
        )
        run_pairs = [p for p in pairs if p["run_id"] == run["id"]]
        shares = episode_spend(
            run_pairs, {run["id"]: run}, machines_by_run, workers, chunks_by_episode, now
        )
        for pair in run_pairs:
            item.episodes[names[pair["episode_id"]]] = shares.get(pair["episode_id"], 0.0)
        report.append(item)
    return report
