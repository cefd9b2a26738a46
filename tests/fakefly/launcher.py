"""What the fake runs when a machine reaches ``started``: by default a real local process.

A launcher is any callable taking a :class:`LaunchSpec` and returning a :class:`Handle`.
:class:`SubprocessLauncher` runs ``python -m worker`` (or any command) with ``os.environ``,
then the variables Fly sets inside a machine, then the machine's ``config.env`` on top, in
its own process group so that stop and destroy reach the worker's children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol


@dataclass(frozen=True)
class LaunchSpec:
    app: str
    machine_id: str
    name: str
    region: str
    config: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)  # Fly's variables + config.env


class Handle(Protocol):
    pid: int | None

    def poll(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal)."""
        ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


class ProcessHandle:
    """A started machine's process, addressed as a process group."""

    def __init__(self, popen: subprocess.Popen[bytes], log: IO[bytes] | None = None):
        self._popen = popen
        self._log = log
        self.pid: int | None = popen.pid

    def poll(self) -> int | None:
        code = self._popen.poll()
        if code is not None and self._log is not None:
            self._log.close()
            self._log = None
        return code

    def send_signal(self, signum: int) -> None:
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        code = self._popen.wait(timeout)
        self.poll()
        return code


class SubprocessLauncher:
    """Runs ``command`` (default ``python -m worker``) for every started machine."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        base_env: Mapping[str, str] | None = None,
    ):
        self.command = list(command) if command else [sys.executable, "-m", "worker"]
        self.cwd = cwd
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.base_env = base_env

    def __call__(self, spec: LaunchSpec) -> ProcessHandle:
        env = dict(os.environ if self.base_env is None else self.base_env)
        env.update(spec.env)
        log: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{spec.machine_id}.log").open("ab")
        popen = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )
        return ProcessHandle(popen, log)
