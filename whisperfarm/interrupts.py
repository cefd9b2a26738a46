"""Every way a run ends cleans up: SIGTERM and SIGHUP end it as Ctrl-C does.

Python turns Ctrl-C (SIGINT) into KeyboardInterrupt, and a run cleans up after one: it
destroys its Fly machines and stops its local workers (``Farm.transcribe``). SIGTERM (a
``kill``, a container or service stop) and SIGHUP (a closed terminal or SSH session) would
end the process at once instead, leaving machines billing until their workers give up.
:func:`stop_signals` makes all three raise :class:`StopSignal`, a KeyboardInterrupt, in
the main thread, so the same cleanup runs for each.

The handler raises once. Any signal after that, or one that comes while cleanup code runs
under :func:`held`, only notes itself: cleanup is never cut short by the second Ctrl-C or
a service manager's repeated SIGTERM (its time is bounded by the fleet's own limits).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STILL_STOPPING = b"whisperfarm: still stopping: ending the run's machines and workers\n"


class StopSignal(KeyboardInterrupt):
    """A signal asked the run to stop; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def label(self) -> str:
        """How the user sent it: Ctrl-C for SIGINT, else the signal's name."""
        return "Ctrl-C" if self.signum == signal.SIGINT else self.name


class _State:
    raised: int | None = None  # the signal that stopped the run
    holding = 0  # cleanup blocks running now


_state = _State()


def _handle(signum: int, frame: FrameType | None) -> None:
    del frame
    if _state.raised is not None or _state.holding:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) takes stderr too
            os.write(2, _STILL_STOPPING)
        return
    _state.raised = signum
    raise StopSignal(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP raise StopSignal (once). Main thread only,
    as Python's signal handlers are."""
    previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}
    _state.raised = None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.raised = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Cleanup that a signal must not cut short: a signal that comes meanwhile is noted,
    not raised. (After a clean finish the run is ending anyway.)"""
    _state.holding += 1
    try:
        yield
    finally:
        _state.holding -= 1


def as_stop_signal(interrupt: KeyboardInterrupt) -> StopSignal:
    """A plain KeyboardInterrupt (Ctrl-C without :func:`stop_signals`) as a StopSignal."""
    return interrupt if isinstance(interrupt, StopSignal) else StopSignal(signal.SIGINT)
