"""The local fleet: worker processes on this machine, each with its share of the cores.

Its processes may be standby workers that ``whisperfarm transcribe`` started before
anything else (``whisperfarm.spawn``); the fleet hands each its configuration and log
when the run starts, and starts a new process for any worker it has no standby for.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from whisperfarm.errors import WorkersLost
from whisperfarm.ledger import Ledger
from whisperfarm.spawn import WORKER_COMMAND, StandbyWorkers, worker_process_environ
from worker.config import WorkerConfig
from worker.standby import StandbyOrder
from worker.wire import WorkerKind


class LocalFleet:
    def __init__(
        self,
        workers: int,
        threads: int,
        *,
        logs_dir: Path,
        run_id: str,
        compute_type: str = "int8",
        batch_size: int | None = None,
        give_up_seconds: float = 30.0,
        standby: StandbyWorkers | None = None,
    ):
        self.workers = workers
        self.threads = threads
        self.logs_dir = logs_dir
        self.run_id = run_id
        self.compute_type = compute_type
        self.batch_size = batch_size
        self.give_up_seconds = give_up_seconds
        self.standby = standby
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ended = 0  # workers still running when stop() came
        self._logs: list[IO[bytes]] = []
        self.description = (
            f"{workers} local worker{'s' if workers != 1 else ''} × {threads} thread"
            f"{'s' if threads != 1 else ''}"
            if workers
            else "no local workers (join with 'whisperfarm worker')"
        )

    def log_path(self, n: int) -> Path:
        return self.logs_dir / f"run-{self.run_id}" / f"worker-{n}.log"

    def start(self, url: str, token: str, model: str) -> None:
        for n in range(self.workers):
            config = WorkerConfig.for_worker(
                url=url,
                token=token,
                threads=self.threads,
                preload_model=model,
                compute_type=self.compute_type,
                given_id=f"local-{self.run_id}-{n}",
                given_kind=WorkerKind.LOCAL,
                give_up_seconds=self.give_up_seconds,
                # The audio is on this machine: nothing to hide by claiming ahead, and a
                # claim ahead would hold chunks another local worker could be decoding.
                prefetch=False,
                **({"batch_size": self.batch_size} if self.batch_size else {}),
            )
            path = self.log_path(n)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.processes.append(self._process(config.to_env(), path))
        if self.standby is not None:
            self.standby.dismiss()  # those not taken

    def _process(self, config: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        """A standby process told to be this worker, else a new one."""
        if self.standby is not None:
            log_path.touch()  # a log that can't be written fails here, not in the standby
            order = StandbyOrder(env=config, log=str(log_path))
            process = self.standby.take(self.threads, order)
            if process is not None:
                return process
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            WORKER_COMMAND,
            env={**worker_process_environ(self.threads), **config},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def check(self, ledger: Ledger, work_left: bool) -> None:
        if not self.processes or not work_left:
            return
        if any(process.poll() is None for process in self.processes):
            return
        # Every local worker is gone. Keep going only if some other worker is active.
        recent = [
            w
            for w in ledger.workers()
            if w["kind"] != WorkerKind.LOCAL and w["last_seen"] > ledger.clock() - 30
        ]
        if recent:
            return
        codes = sorted({process.returncode for process in self.processes})
        raise WorkersLost(
            f"all local workers exited (exit code {', '.join(map(str, codes))}) with work left: "
            f"{self._last_words()} — see {self.log_path(0).parent}"
        )

    def _last_words(self) -> str:
        for n in range(self.workers):
            try:
                lines = self.log_path(n).read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                if " ERROR " in line or "Error" in line:
                    return line.split(" ERROR ", 1)[-1].strip()
        return "no error in the logs"

    def gone_workers(self) -> list[str]:
        return [
            f"local-{self.run_id}-{n}"
            for n, process in enumerate(self.processes)
            if process.poll() is not None
        ]

    def stopped(self) -> str:
        if not self.ended:
            return ""
        return f"stopped {self.ended} local worker{'s' if self.ended != 1 else ''}"

    def stop(self, grace: float = 3.0) -> None:
        # Ask every worker still running to stop now (SIGTERM): one waiting for work exits
        # at once instead of after its "wait" back-off, one in the middle of a chunk hands
        # it back.
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                self.ended += 1
        for process in self.processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
