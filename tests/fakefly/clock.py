"""A clock for tests: time moves only when told to, or when the fake "sleeps"."""

from __future__ import annotations


class FakeClock:
    """Callable like ``time.time``; ``sleep`` (async, for the app) and ``sleep_sync`` (for
    the client) advance it instead of waiting."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def sleep_sync(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
