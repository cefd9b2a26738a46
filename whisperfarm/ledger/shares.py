"""How many chunks a batched claim takes: the claiming worker's fair share of the work left.

A batch decodes as one, so a worker that took the whole tail would finish it alone while
the others sit idle; one that took too little would come back for the rest while the
others are still busy, and decode it in smaller batches (each chunk dearer: a batch of 4
decodes a chunk in about 0.8 of the time one alone takes on a CPU). The share levels the
work each worker has in hand:

- before any chunk in scope is done, the run doesn't know how fast chunks go, and the
  workers holding leases are taken to be about to finish them: the claimable chunks, with
  what the claiming worker holds (a prefetching worker claims while its batch decodes),
  are split evenly among the workers at work or the fleet the run plans, whichever is more
  (machines still booting hold no lease);
- once the run has a speed (each worker's own, seconds of decoding per second of audio,
  else the run's), each worker's leases are so much audio still to decode, less what it has
  decoded since it claimed them, and the claimable audio is poured over those backlogs
  like water (the lowest first) until it is all taken. The claiming worker takes what
  comes to it, to the nearest chunk. A worker that has just claimed a batch of 4 is not
  counted as free: the one asking after it takes more of what is left, instead of half
  of it and then the rest again alone.

Never less than one chunk: a worker is not told to wait while chunks are queued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Holding:
    """A worker's live leases in scope: their audio, when the first was claimed, and the
    worker's speed (seconds of decoding per second of audio; None before its first result)."""

    chunks: int
    audio: float
    claimed_at: float
    speed: float | None

    def left(self, now: float, speed: float) -> float:
        """Seconds of audio still to decode, had the worker decoded since its first claim."""
        return max(0.0, self.audio - (now - self.claimed_at) / (self.speed or speed))


def fair_share(
    claimable: Sequence[float],
    mine: Holding | None,
    others: Sequence[Holding],
    *,
    now: float,
    speed: float | None,
    fleet: int,
    limit: int,
) -> int:
    """How many of the ``claimable`` chunks (their audio seconds) the claiming worker takes,
    ``mine`` being its own leases, ``others`` the other workers' (one holding each),
    ``speed`` the run's, ``fleet`` the workers the run plans (the module's docstring)."""
    workers = max(len(others) + 1, fleet)
    if speed is None or speed <= 0 or not claimable:
        held = mine.chunks if mine is not None else 0
        share = -(-(len(claimable) + held) // workers) - held
    else:
        backlogs = [mine.left(now, speed) if mine is not None else 0.0]
        backlogs += [other.left(now, speed) for other in others]
        backlogs += [0.0] * (workers - len(backlogs))
        level = _water_level(backlogs, sum(claimable))
        per_chunk = sum(claimable) / len(claimable)
        share = math.floor((level - backlogs[0]) / per_chunk + 0.5)
    return min(limit, max(1, share))


def _water_level(backlogs: Sequence[float], work: float) -> float:
    """The level at which ``work`` poured over ``backlogs`` (the lowest first) comes to
    rest: sum(max(0, level - backlog)) == work."""
    ordered = sorted(backlogs)
    total = 0.0
    for count, backlog in enumerate(ordered, 1):
        total += backlog
        level = (work + total) / count
        if count == len(ordered) or level <= ordered[count]:
            return level
    return work  # no backlogs at all (a fleet of none): everything is the claimer's
