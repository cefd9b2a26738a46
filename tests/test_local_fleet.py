"""Stopping the local fleet: workers are asked to stop at once, not waited for."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from whisperfarm.local import LocalFleet

# A stand-in worker: waits for work until SIGTERM, then exits 0 like `python -m worker`.
IDLE_WORKER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def test_stop_asks_idle_workers_to_stop_at_once(tmp_path: Path) -> None:
    """A worker between claims is told to stop rather than left to notice the run is over
    on its next claim: the end of every run would otherwise wait for its back-off."""
    fleet = LocalFleet(2, 1, logs_dir=tmp_path, run_id="r1")
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-c", IDLE_WORKER], stdout=subprocess.PIPE)
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        fleet.processes.append(process)
    started = time.monotonic()
    fleet.stop(grace=10.0)
    assert time.monotonic() - started < 5.0
    assert [process.returncode for process in fleet.processes] == [0, 0]
    assert fleet.gone_workers() == ["local-r1-0", "local-r1-1"]
    for process in fleet.processes:
        assert process.stdout is not None
        process.stdout.close()


def test_stop_kills_a_worker_that_ignores_sigterm(tmp_path: Path) -> None:
    fleet = LocalFleet(1, 1, logs_dir=tmp_path, run_id="r2")
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    process = subprocess.Popen(
        [sys.executable, "-c", stubborn + "print('ready', flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    fleet.processes.append(process)
    fleet.stop(grace=0.5)
    assert process.returncode == -9
    process.stdout.close()
