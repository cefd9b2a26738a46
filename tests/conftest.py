"""Shared fixtures. Every test gets its own WHISPERFARM_HOME, so no test touches a real
ledger and tests don't see each other's state."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "episode.mp3"
SAMPLE_TEXT = REPO / "samples" / "episode.txt"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WHISPERFARM_HOME", str(home))
    monkeypatch.delenv("WHISPERFARM_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("WHISPERFARM_") and name not in (
            "WHISPERFARM_HOME",
            "WHISPERFARM_FFMPEG",
        ):
            monkeypatch.delenv(name, raising=False)
    return home


class FakeClock:
    """A clock tests move by hand: lease expiry without sleeping."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def python() -> str:
    return sys.executable
