"""A fake Fly Machines API that behaves like shared/FLY_MACHINES_API.md says Fly does.

In-process: ``create_app(...)`` gives an ASGI app (drive it with ``starlette.testclient``
or ``httpx.ASGITransport``); its state is ``app.state.fly``; a ``tests.support.clock.FakeClock``
drives its time in process. As a server:
``python -m tests.fakefly --port 0 --launch-workers`` (see ``--help``).

Self-contained on purpose: it imports nothing from whisperfarm, so it cannot share a bug
with the client it checks.
"""

from tests.fakefly.app import create_app
from tests.fakefly.launcher import Handle, LaunchSpec, ProcessHandle, SubprocessLauncher
from tests.fakefly.rules import ApiError, Faults
from tests.fakefly.state import FakeFly, FakeMachine

__all__ = [
    "ApiError",
    "FakeFly",
    "FakeMachine",
    "Faults",
    "Handle",
    "LaunchSpec",
    "ProcessHandle",
    "SubprocessLauncher",
    "create_app",
]
