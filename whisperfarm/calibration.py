"""Measured speed: after each run, how fast its workers transcribed, per CPU, kept per
model, compute type and kind of worker (fly, local, remote). Fly run plans use the Fly
measurement when there is one, else a local one, else the built-in table, and say which.

A worker's speed is the audio it transcribed over the time it was busy (download,
decoding and upload included), divided by its effective CPUs (threads count with
``policy.THREAD_EFFICIENCY``). New measurements are averaged in by audio, with history
capped at an hour of audio so the figure follows changes (a new image, other CPUs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from whisperfarm.fly.policy import THREAD_EFFICIENCY
from whisperfarm.ledger import Ledger
from worker.wire import WorkerKind

PREFERENCE = (WorkerKind.FLY, WorkerKind.LOCAL, WorkerKind.REMOTE)


@dataclass(frozen=True)
class Calibration:
    model: str
    compute_type: str
    kind: str
    per_cpu: float
    audio_seconds: float
    runs: int

    def describe(self) -> str:
        measured: dict[str, str] = {
            WorkerKind.FLY: "measured on Fly machines",
            WorkerKind.LOCAL: "measured on local workers (this machine's CPUs, not Fly's)",
        }
        where = measured.get(self.kind, f"measured on {self.kind} workers")
        return (
            f"{where}: {self.per_cpu:.1f}× realtime per CPU over "
            f"{self.audio_seconds / 60:.0f} min of audio, {self.runs} run(s)"
        )


def measure_run(ledger: Ledger, run_id: str) -> list[Calibration]:
    """Measure the run's workers and fold the result into the stored calibrations."""
    episodes = ledger.episodes_by_id(ledger.run_episodes(run_id))
    if not episodes:
        return []
    model = episodes[0]["model"]
    compute_type = json.loads(episodes[0]["options"]).get("compute_type", "int8")
    by_kind: dict[str, tuple[float, float]] = {}  # kind → (audio, audio / speed per cpu)
    for worker in ledger.run_workers(run_id):
        if worker["busy_seconds"] <= 0 or worker["audio_seconds"] <= 0:
            continue
        cpus = 1 + ((worker["threads"] or 1) - 1) * THREAD_EFFICIENCY
        per_cpu = worker["audio_seconds"] / worker["busy_seconds"] / cpus
        audio, weighted = by_kind.get(worker["kind"], (0.0, 0.0))
        by_kind[worker["kind"]] = (
            audio + worker["audio_seconds"],
            weighted + worker["audio_seconds"] * per_cpu,
        )
    stored = []
    for kind, (audio, weighted) in by_kind.items():
        stored.append(ledger.fold_calibration(model, compute_type, kind, weighted / audio, audio))
    return [Calibration(**row) for row in stored]


def best(ledger: Ledger, model: str, compute_type: str) -> Calibration | None:
    rows = {row["kind"]: row for row in ledger.calibrations(model, compute_type)}
    for kind in (*PREFERENCE, *sorted(rows)):
        if kind in rows:
            row = rows[kind]
            return Calibration(
                row["model"],
                row["compute_type"],
                row["kind"],
                row["per_cpu"],
                row["audio_seconds"],
                row["runs"],
            )
    return None


def for_settings(model: str, compute_type: str, ledger_path: Path) -> Calibration | None:
    """The best stored measurement, without creating a ledger where there is none."""
    if not ledger_path.exists():
        return None
    ledger = Ledger(ledger_path)
    try:
        return best(ledger, model, compute_type)
    finally:
        ledger.close()
