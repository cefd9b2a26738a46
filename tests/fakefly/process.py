"""The fake served in its own process (``python -m tests.fakefly``), running a real worker
for every started machine: what the end-to-end tests and scripts/chaos talk to."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


class FakeFlyProcess:
    def __init__(self, tmp: Path, *flags: str, token: str, app: str):
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.fakefly", "--port", "0", "--token", token),
                *("--app", app, "--launch-workers", "--start-latency", "0.5"),
                *("--log-dir", str(tmp / "machines"), *flags),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line.startswith("FAKEFLY_URL="), line
        self.url = line.split("=", 1)[1]

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/state", timeout=10).json()

    def close(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
