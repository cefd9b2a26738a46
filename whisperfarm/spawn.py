"""Starting local worker processes: their command, their environment, how many of how
many threads suit this machine, and standby workers. One module because
``whisperfarm.launch`` imports it before anything heavy: the standard library and
worker.standby only.

A standby worker (``python -m worker --standby``, worker.standby) is started before the
CLI has read its settings: ``whisperfarm.launch`` starts a ``transcribe``'s local fleet
first thing, its layout read off the command line and the environment, so that the
workers' imports (about 0.7 CPU-seconds each) run beside the CLI's own (about a second)
instead of after them. Once the CLI has read its settings it tells them the model to
load (``preload``), which they do while it starts the run. The run's local fleet
(``whisperfarm.local``) hands each its order; those it doesn't take are ended.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from worker.standby import Preload, StandbyOrder

FLY_SECRETS = ("FLY_API_TOKEN", "FLY_ACCESS_TOKEN", "WHISPERFARM_FLY_API_TOKEN")
"""The Fly API token, under every name settings read it from: the CLI needs it to manage
machines, a worker never does, so local workers don't inherit it."""


def worker_environ() -> dict[str, str]:
    """This process's environment, less the secrets a worker has no use for."""
    secret = {name.upper() for name in FLY_SECRETS}
    return {name: value for name, value in os.environ.items() if name.upper() not in secret}


def worker_process_environ(threads: int) -> dict[str, str]:
    """The environment a local worker process starts in, before its configuration: no
    model downloads (the CLI fetched the model already), and ``threads`` for the
    libraries that size their thread pools when they load."""
    return {**worker_environ(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}


WORKER_COMMAND = (sys.executable, "-m", "worker")


class StandbyWorkers:
    """Worker processes started before the run's settings are read (``python -m worker
    --standby``), for a local fleet of ``threads``-thread workers. ``take`` hands one its
    order; ``dismiss`` ends the rest: one not taken holds nothing (no lease, no file)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]], threads: int):
        self.processes = processes
        self.threads = threads

    @classmethod
    def start(cls, count: int, threads: int) -> StandbyWorkers:
        env = worker_process_environ(threads)
        processes = [
            subprocess.Popen(
                [*WORKER_COMMAND, "--standby"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        return cls(processes, threads)

    def preload(self, env: dict[str, str]) -> None:
        """Tell every standby the model part of its coming order (worker.standby's
        ``Preload``), to load it now. One that died is left to ``take``."""
        line = Preload(env).to_line()
        for process in self.processes:
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.write(line)
                process.stdin.flush()

    def take(self, threads: int, order: StandbyOrder) -> subprocess.Popen[bytes] | None:
        """A standby process now working as ``order`` says, or None when none is left
        that was started for ``threads`` threads and still runs."""
        if threads != self.threads:
            return None
        while self.processes:
            process = self.processes.pop(0)
            assert process.stdin is not None
            try:
                process.stdin.write(order.to_line())
                process.stdin.close()
            except OSError:  # it died while waiting (its end of the pipe is closed)
                process.wait()
                continue
            return process
        return None

    def dismiss(self) -> None:
        """End every standby not taken, at once: one still importing would otherwise
        spend its CPU beside the run's workers."""
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.close()
        self.processes = []

    close = dismiss


def default_workers(cpus: int | None = None) -> tuple[int, int]:
    """(workers, threads each). One single-threaded worker per core beats one worker with
    every core on small CPU models: beam search parallelises poorly inside one process.
    On larger machines, two threads per worker keeps memory (one model each) in check."""
    cpus = cpus or os.cpu_count() or 1
    workers = cpus if cpus <= 4 else cpus // 2
    return workers, max(1, cpus // workers)


def local_layout(
    cpus: int | None = None, workers: int | None = None, threads: int | None = None
) -> tuple[int, int]:
    """(workers, threads each) of a local fleet on ``cpus`` cores (default: this
    machine's): ``workers`` as given, else ``default_workers``; ``threads`` as given,
    else an equal share of the cores."""
    cpus = cpus or os.cpu_count() or 1
    if workers is None:
        workers, share = default_workers(cpus)
    else:
        share = max(1, cpus // max(1, workers))
    return workers, share if threads is None else threads
