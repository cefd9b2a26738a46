"""A worker started before its farm exists: ``python -m worker --standby``.

``whisperfarm transcribe`` starts its local workers' processes first thing
(``whisperfarm.spawn.StandbyWorkers``), before its own imports, so that a worker's imports
(faster-whisper, CTranslate2, httpx, pydantic: about 0.7 CPU-seconds) run beside the CLI's
instead of after them. A standby worker imports, then reads its standard input, one
line of JSON each:

- a ``Preload`` first, maybe: the model part of its coming order (the model, its compute
  type, the threads), sent once the CLI has read its settings. The standby loads that
  model while the CLI starts its run;
- a ``StandbyOrder``: its configuration (the variables ``python -m worker`` reads) and
  its log file. It then works as ``python -m worker`` would in that environment, with the
  preloaded model if the order wants that one.

At the end of its input (the run took no local worker, or the CLI is gone) it exits 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import IO


@dataclass(frozen=True)
class StandbyOrder:
    """What a standby worker is told to be: ``env`` on top of its own environment, and
    the file its standard output and error go to. One line of JSON on the wire (plain
    json: the CLI sends it from a module it imports before anything heavy)."""

    env: dict[str, str]
    log: str

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: str) -> StandbyOrder:
        fields = json.loads(line)
        return cls(env={str(k): str(v) for k, v in fields["env"].items()}, log=str(fields["log"]))


@dataclass(frozen=True)
class Preload:
    """The variables of a standby's coming order that choose its model
    (WHISPERFARM_MODEL, WHISPERFARM_COMPUTE_TYPE, WHISPERFARM_THREADS), as one line of
    JSON under the key "preload"."""

    env: dict[str, str]

    def to_line(self) -> bytes:
        return json.dumps({"preload": self.env}).encode() + b"\n"


def read_message(stdin: IO[str]) -> StandbyOrder | Preload | None:
    """The order or preload on ``stdin``'s next line; None at the end of input."""
    line = stdin.readline()
    if not line.strip():
        return None
    fields = json.loads(line)
    if "preload" in fields:
        return Preload({str(k): str(v) for k, v in fields["preload"].items()})
    return StandbyOrder.from_line(line)


def log_to(path: str) -> None:
    """Send this process's standard output and error (file descriptors 1 and 2) to the
    end of ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
