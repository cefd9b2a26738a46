"""What a coordinator serves: the run's ledger, token and episodes, its lease and attempt
limits, and one ledger connection per server thread.

Its own module, not ``coordinator.py``: the worker API and the status page read it, and
the coordinator module builds the app from both, so the imports run one way
(coordinator → worker_api, page → coordinator_config).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from whisperfarm.ledger import Clock, Ledger
from worker.wire import WorkerKind

LOCAL_WAIT_SECONDS = 0.2
"""How soon one of the run's own local workers, told to wait, asks again (others:
worker.wire.WAIT_SECONDS): a local worker asking a second late idles one of this
machine's few cores for that second (the sample's last chunks waited up to 1 s each)."""


class Attached:
    """The workers that claim from this coordinator, each with the time of its last claim
    and the answer it got. At the end of a run the farm waits (briefly) until every worker
    still attached has been answered "done", so a worker that joined with the printed
    command exits 0 instead of finding the coordinator gone. The run's own local workers
    are not waited for: the farm stops them itself, at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, str]] = {}

    def claimed(self, worker_id: str, status: str, *, kind: str = WorkerKind.REMOTE) -> None:
        with self._lock:
            if kind == WorkerKind.LOCAL:
                return
            self._last[worker_id] = (self.clock(), status)

    def not_told_done(self, within: float) -> list[str]:
        """Workers that claimed within the last ``within`` seconds and were not answered
        "done" (so they will ask again)."""
        now = self.clock()
        with self._lock:
            return sorted(
                worker
                for worker, (at, status) in self._last.items()
                if status != "done" and now - at <= within
            )


@dataclass
class CoordinatorConfig:
    ledger_path: Path
    token: str
    scope: Callable[[], list[str]]
    episodes_dir: Path
    lease_seconds: float = 60.0
    max_attempts: int = 3
    backups: bool = False
    """Back up stragglers on idle workers (``ledger.queue``; never one local worker's
    chunk on another: they share the cores)."""
    fleet_size: int = 0
    """The workers the run expects at most (its local workers and the Fly machines it
    plans, ``plan.RunPlan.fleet_size``); a batched claim takes no more than its share of
    the queue among them (0: among the workers holding leases; ``ledger.shares``)."""
    clock: Clock | None = None
    attached: Attached = field(default_factory=Attached)
    settled: threading.Event = field(default_factory=threading.Event)
    """Set whenever a worker posts a result or a failure: the farm's watch loop wakes on
    it (and clears it) instead of sleeping out its tick, so a run ends as soon as its last
    chunk is in."""
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
