"""Shared fixtures (plain helpers live in tests/support). Every test gets its own
WHISPERFARM_HOME, so no test touches a real ledger and tests don't see each other's state."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import farm_state
from tests.support.clock import FakeClock
from tests.support.httpfiles import Files, serving
from whisperfarm.download import http_client
from whisperfarm.ledger import Ledger


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


@pytest.fixture
def no_fly_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Fly app or token from the shell the tests run in (modules that read Fly settings
    use it: ``pytestmark = pytest.mark.usefixtures("no_fly_env")``)."""
    for name in (
        "FLY_API_TOKEN",
        "FLY_ACCESS_TOKEN",
        "FLY_APP",
        "FLY_FLAPS_BASE_URL",
        "FLY_API_URL",
        "FLY_APP_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def ledger(home: Path, clock: FakeClock) -> Iterator[Ledger]:
    """An empty ledger where the CLI looks for it (the test's home), on the ``clock``."""
    ledger = Ledger(home / "ledger.db", clock=clock)
    yield ledger
    ledger.close()


@pytest.fixture
def farm(ledger: Ledger, clock: FakeClock) -> Ledger:
    """The ``ledger`` in the known state tests/support/farm_state.py draws; the clock at NOW."""
    farm_state.build(ledger, clock)
    return ledger


@pytest.fixture
def files() -> Iterator[Files]:
    """A real HTTP server in a thread, serving what the test puts in it."""
    with serving() as served:
        yield served


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The HTTP client downloads use."""
    with http_client() as made:
        yield made
