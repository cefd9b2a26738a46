"""Runs (``runs``, ``run_episodes``): what each ``transcribe``/``serve`` took on and how it
ended. The run's machines and their spend are the Fly layer's (``whisperfarm.fly.store``)."""

from __future__ import annotations

import json
from typing import cast

from whisperfarm.ledger.rows import RunRecord, WorkerRecord
from whisperfarm.ledger.store import Store
from whisperfarm.states import ChunkState, RunState

# The states as SQL spells them (StrEnums format as their values).
DONE = ChunkState.DONE
RUN_RUNNING = RunState.RUNNING


class RunStore(Store):
    def start_run(
        self,
        run_id: str,
        *,
        backend: str,
        episode_ids: list[str],
        url: str | None = None,
        pid: int | None = None,
        budget: float | None = None,
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, backend, url, pid, budget, started_at, state)"
                f" VALUES (?, ?, ?, ?, ?, ?, '{RUN_RUNNING}')",
                (run_id, backend, url, pid, budget, self.clock()),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO run_episodes (run_id, episode_id) VALUES (?, ?)",
                [(run_id, episode_id) for episode_id in episode_ids],
            )

    def set_run_url(self, run_id: str, url: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET url = ? WHERE id = ?", (url, run_id))

    def running_runs(self, episode_ids: list[str]) -> list[RunRecord]:
        """Runs marked running that include any of these episodes."""
        rows = self._rows(
            "SELECT DISTINCT r.* FROM runs r JOIN run_episodes e ON e.run_id = r.id"
            f" WHERE r.state = '{RUN_RUNNING}'"
            " AND e.episode_id IN (SELECT value FROM json_each(?))",
            (json.dumps(episode_ids),),
        )
        return cast(list[RunRecord], rows)

    def runs(self) -> list[RunRecord]:
        return cast(list[RunRecord], self._rows("SELECT * FROM runs ORDER BY started_at"))

    def run_episodes(self, run_id: str) -> list[str]:
        return [
            row["episode_id"]
            for row in self._rows("SELECT episode_id FROM run_episodes WHERE run_id = ?", (run_id,))
        ]

    def set_run_limits(self, run_id: str, *, budget: float | None, max_machines: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET budget = ?, max_machines = ? WHERE id = ?",
                (budget, max_machines, run_id),
            )

    def run_workers(self, run_id: str) -> list[WorkerRecord]:
        """Workers that finished chunks of the run's episodes while it ran."""
        rows = self._rows(
            "SELECT * FROM workers WHERE id IN (SELECT DISTINCT c.worker_id FROM chunks c"
            " JOIN run_episodes e ON e.episode_id = c.episode_id JOIN runs r ON r.id = e.run_id"
            f" WHERE r.id = ? AND c.state = '{DONE}' AND c.finished_at >= r.started_at)",
            (run_id,),
        )
        return cast(list[WorkerRecord], rows)

    def end_run(self, run_id: str, state: str, *, spent: float = 0.0) -> None:
        """The run is over, in ``state``, having cost ``spent`` dollars: its machines' spend,
        which the Fly layer knows (``MachineStore.spend``); nothing for a local run."""
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, ended_at = ?, spent = ? WHERE id = ?",
                (state, self.clock(), spent, run_id),
            )
