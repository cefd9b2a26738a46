"""A clock for tests: time moves only when told to, or when something "sleeps" on it."""

from __future__ import annotations


class FakeClock:
    """Callable like ``time.time``: lease expiry and backoff without sleeping. ``sleep``
    (async, for the fake Machines API) and ``sleep_sync`` (for the clients) advance it
    instead of waiting; ``slept`` records what ``sleep_sync`` was asked for."""

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
