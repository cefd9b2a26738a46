"""Running the real CLI on the Fly backend against the fake Machines API, and reading back
what the fake billed: shared by the Fly end-to-end tests."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from tests.support.paths import SAMPLE

APP = "whisperfarm-workers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fly_args(tmp_path: Path, *extra: str, audio: Path = SAMPLE) -> list[str]:
    """``whisperfarm transcribe --backend fly`` on ``audio`` (the sample), into
    ``tmp_path / "out"``."""
    port = free_port()
    return [
        sys.executable,
        "-m",
        "whisperfarm",
        "transcribe",
        str(audio),
        "--model",
        "tiny.en",
        "--backend",
        "fly",
        "--advertise-url",
        f"http://127.0.0.1:{port}",
        "--port",
        str(port),
        "--out",
        str(tmp_path / "out"),
        "--format",
        "txt,json",
        "--yes",
        *extra,
    ]


def billed(state: dict[str, Any], price: float) -> float:
    """What Fly would bill, from the fake's own record: created → stopped/destroyed."""
    total = 0.0
    for machine in state["machines"]:
        times = {h["state"]: h["at"] for h in machine["history"]}
        end = times.get("stopped") or times.get("destroying") or times.get("destroyed")
        assert end is not None, f"machine {machine['id']} never ended"
        total += (end - times["created"]) * price
    return total


def assert_all_destroyed(state: dict[str, Any]) -> None:
    assert state["machines"], "no machine was started"
    left = [(m["id"], m["state"]) for m in state["machines"] if m["state"] != "destroyed"]
    assert not left, f"machines left behind: {left}"
