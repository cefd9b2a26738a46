"""How many machines to start, and what a run will take and cost: pure functions.

Speeds are in seconds of audio per second of wall time (× realtime) for one machine.
Money is in dollars. Nothing here talks to Fly or reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from whisperfarm import chunk_limits

# Measured or estimated × realtime per performance CPU with int8 on CPU (beam 5). The
# tiny.en figure is measured by scripts/bench on this project's reference machine; the
# others scale it by the models' relative decoder cost. ``speed`` in settings overrides.
SPEED_PER_CPU: dict[str, float] = {
    "tiny.en": 8.0,
    "tiny": 7.0,
    "base.en": 4.0,
    "base": 3.5,
    "small.en": 1.5,
    "small": 1.4,
    "distil-small.en": 2.5,
    "medium.en": 0.5,
    "medium": 0.5,
    "distil-medium.en": 0.9,
    "large-v3-turbo": 0.6,
    "turbo": 0.6,
    "distil-large-v3": 0.5,
    "distil-large-v3.5": 0.5,
}
DEFAULT_SPEED_PER_CPU = 0.3  # large models and unknown directories: assume slow
THREAD_EFFICIENCY = 0.8  # a worker with N threads is not N times faster
CREATES_PER_SECOND = 1.0  # Fly's create limit per app ...
CREATE_BURST = 3  # ... with this burst (a hundred machines take about 100 s to create)


class CreateRate:
    """Fly's create limit per app, kept on our side (a token bucket), so creates are paced
    rather than refused with 429."""

    def __init__(self, now: float):
        self.tokens, self.last = float(CREATE_BURST), now

    def take(self, now: float) -> bool:
        """Use one create if the limit allows it at ``now``."""
        elapsed = max(0.0, now - self.last)
        self.tokens = min(float(CREATE_BURST), self.tokens + elapsed * CREATES_PER_SECOND)
        self.last = max(self.last, now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def settle(self, now: float) -> None:
        """A create taken earlier was answered at ``now``. Fly counted it when it arrived,
        somewhere in between, so no refill is credited for the time it was in flight: the
        next create then reaches Fly at least a token's time after it (paced from the
        send alone, a slow request followed by a fast one arrive too close: 429)."""
        self.last = max(self.last, now)

    def wait(self) -> float:
        """Seconds until the next create is allowed (after a refused ``take``)."""
        return max(0.0, (1 - self.tokens) / CREATES_PER_SECOND)


def create_times(machines: int, ready: int = 0, *, probe: float = 0.0) -> list[float]:
    """Seconds from the start of a run until each machine's create (or start) request can
    go out: ``ready`` warm-pool machines and the first CREATE_BURST creates at once, then
    CREATES_PER_SECOND. With a ``probe`` (reachability first, see reach.py) one machine
    goes first, a pool machine if there is one, and the rest follow as above once its
    worker has reached the coordinator, ``probe`` seconds later (the create burst is back
    by then)."""
    if probe > 0 and machines > 1:
        rest = create_times(machines - 1, max(0, ready - 1))
        return [0.0] + [probe + at for at in rest]
    created = max(0, machines - ready)
    ramp = [max(0, n - CREATE_BURST + 1) / CREATES_PER_SECOND for n in range(created)]
    return [0.0] * min(ready, machines) + ramp


def machine_speed(model: str, cpus: int, per_cpu: float | None = None) -> float:
    """× realtime of one worker machine with ``cpus`` performance CPUs."""
    base = per_cpu if per_cpu is not None else SPEED_PER_CPU.get(model, DEFAULT_SPEED_PER_CPU)
    return base * (1 + (cpus - 1) * THREAD_EFFICIENCY)


@dataclass(frozen=True)
class FleetState:
    remaining_audio: float  # seconds of audio in chunks not yet done
    chunks_left: int  # chunks queued or leased
    machines: int  # machines created and not yet gone (starting, started, stopping)
    spent: float  # dollars so far, including machines still running


@dataclass(frozen=True)
class FleetLimits:
    max_machines: int
    budget: float | None  # dollars; None = no cap
    price_per_second: float  # one machine
    speed: float  # one machine, × realtime
    start_latency: float = 45.0  # create → worker claiming (image, boot, model load)
    stop_margin: float = 30.0  # seconds a machine may bill after we ask it to stop
    longest_chunk: float = chunk_limits.MAX_SECONDS  # seconds of audio, as the run cuts


def machines_to_start(state: FleetState, limits: FleetLimits) -> int:
    """How many more machines to create now.

    Scale up while there is work, never past ``max_machines`` or one machine per chunk
    left; skip it when the machines already running finish before a new one could help;
    start only machines the budget can pay for through their expected work plus the
    start latency and a stop margin, after reserving the same for the running ones.
    """
    if state.chunks_left <= 0 or state.remaining_audio <= 0:
        return 0
    target = min(limits.max_machines, state.chunks_left)
    if state.machines >= target:
        return 0
    if state.machines > 0:
        finish_now = state.remaining_audio / (state.machines * limits.speed)
        if finish_now <= limits.start_latency:
            return 0
    wanted = target - state.machines
    if limits.budget is None:
        return wanted
    # The work per machine if we reach the target; each machine bills that much plus
    # its start latency and stop margin (the running ones need no start latency).
    work = state.remaining_audio / (target * limits.speed)
    reserve_running = state.machines * (work + limits.stop_margin) * limits.price_per_second
    per_new = (limits.start_latency + work + limits.stop_margin) * limits.price_per_second
    left = limits.budget - state.spent - reserve_running
    if left <= 0 or per_new <= 0:
        return 0
    affordable = min(wanted, math.floor(left / per_new))
    if affordable == 0 and state.machines == 0:
        # Not enough for the whole job: one machine still does part of it if the budget
        # pays for its start, one chunk of work and its stop; the run stops at the cap.
        one_chunk = limits.longest_chunk / limits.speed
        if (
            left
            >= (limits.start_latency + one_chunk + limits.stop_margin) * limits.price_per_second
        ):
            return 1
    return max(0, affordable)


def must_stop(state: FleetState, limits: FleetLimits, lookahead: float = 0.0) -> bool:
    """True when the machines must stop now so the bill stays within the budget: what is
    spent, plus what the running machines bill until the next check (``lookahead``) and
    while stopping, reaches the cap."""
    if limits.budget is None or state.machines == 0:
        return False
    coming = state.machines * (limits.stop_margin + lookahead) * limits.price_per_second
    return state.spent + coming >= limits.budget


@dataclass(frozen=True)
class Plan:
    machines: int
    wall_seconds: float
    cost: float
    fits_budget: bool


def plan(
    audio_seconds: float,
    chunks: int,
    limits: FleetLimits,
    *,
    ready: int = 0,
    probe: bool = False,
) -> Plan:
    """The estimate shown before a run: how many machines, how long, what it costs.

    Machines join as Fly lets them be made (``create_times``; ``ready`` of them from the
    warm pool, at once), each a start latency after its request; they share the work
    until it is done, plus the longest chunk for the last one. Each bills from its request
    until the work is done, plus a stop margin. With ``probe`` (reachability first), the
    others are asked for only when the first machine's worker has reached the
    coordinator: a start latency after the first request."""
    machines = max(1, min(limits.max_machines, chunks))
    if limits.budget is not None:
        state = FleetState(audio_seconds, chunks, 0, 0.0)
        machines = max(1, min(machines, machines_to_start(state, limits) or 1))
    requests = create_times(machines, ready, probe=limits.start_latency if probe else 0.0)
    done = _work_done_at(
        audio_seconds / limits.speed, [at + limits.start_latency for at in requests]
    )
    # A machine that could only join once the work is done is never made.
    used = [at for at in requests if at + limits.start_latency < done] or requests[:1]
    wall = done + limits.longest_chunk / limits.speed
    cost = sum(done - at + limits.stop_margin for at in used) * limits.price_per_second
    fits = limits.budget is None or cost <= limits.budget
    return Plan(len(used), wall, cost, fits)


def _work_done_at(work: float, joins: list[float]) -> float:
    """When ``work`` machine-seconds are done by machines working from ``joins`` on: the
    T with sum(max(0, T - join)) == work."""
    ordered = sorted(joins)
    for n in range(len(ordered), 0, -1):
        # With the first n machines working: n * T - sum(their joins) = work.
        t = (work + sum(ordered[:n])) / n
        if t >= ordered[n - 1]:
            return t
    return ordered[0] + work
