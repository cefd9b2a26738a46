"""Reachability first, then scale: do the run's machines reach the coordinator?

A machine can start on Fly and still never reach the laptop that runs the coordinator (no
WireGuard peer, a firewall, a wrong ``--advertise-url``). Its worker retries, gives up, the
machine destroys itself, and a fleet that only counts machines makes another, for ever.
The coordinator's ledger holds the truth: a worker that reached it has a row in
``workers`` (written by its first claim). :class:`Reachability` turns that into rules:

- while no worker of the run has reached the coordinator, at most one machine whose worker
  has not reached it runs at a time (the probe);
- a machine whose worker has not reached the coordinator ``timeout`` seconds after the
  machine was first seen running, or that was seen running and ended without its worker
  reaching it, is *unreached*: the fleet destroys it if it still runs;
- before any worker has reached the coordinator, the first machine that runs out its
  ``timeout``, or ends after running at least ``give_up`` seconds (its worker gave up on
  the coordinator), stops the run; one that ends sooner crashed, which says nothing about
  the network, and only counts towards the next rule;
- ``limit`` unreached machines in a row stop the run; after any unreached machine the
  fleet probes again, one machine at a time, until a worker reaches the coordinator.

Pure: the fleet passes what it saw and the time; nothing here reads a clock or the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from whisperfarm.states import MACHINE_ENDED, MachineState


@dataclass(frozen=True)
class ReachLimits:
    """From settings: ``fly_reach_timeout`` and ``fly_unreached_limit``."""

    timeout: float  # seconds from a machine running to its worker's first claim, at most
    limit: int  # unreached machines in a row that end the run
    # A machine that ran this long and ended unreached had a worker that gave up on the
    # coordinator (the worker's own give-up, less a poll); one that ended sooner crashed.
    give_up: float


class Reachability:
    def __init__(self, limits: ReachLimits):
        self.limits = limits
        self.reached_any = False
        self.streak = 0  # unreached machines since the last one whose worker reached us
        self.unreached = 0  # in all
        self.gave_up = False  # a machine timed out, or its worker gave up on us
        self._running_since: dict[str, float] = {}
        self._judged: set[str] = set()

    @property
    def probing(self) -> bool:
        """Whether to run at most one unproven machine at a time."""
        return not self.reached_any or self.streak > 0

    @property
    def failed(self) -> bool:
        return self.streak >= self.limits.limit or (self.gave_up and not self.reached_any)

    def observe(self, machine_id: str, *, state: str, reached: bool, now: float) -> bool:
        """Take in what was seen of one machine; True when it is newly found unreached
        while still running (the fleet should end it)."""
        if machine_id in self._judged:
            return False
        if reached:
            self._judged.add(machine_id)
            self.reached_any = True
            self.streak = 0
            return False
        if state in MACHINE_ENDED:
            if machine_id not in self._running_since:  # a failed launch, not a network
                self._judged.add(machine_id)
                return False
            ran = now - self._running_since[machine_id]
            self._count_unreached(machine_id, gave_up=ran >= self.limits.give_up)
            return False
        if state != MachineState.STARTED:
            return False
        since = self._running_since.setdefault(machine_id, now)
        if now - since < self.limits.timeout:
            return False
        self._count_unreached(machine_id, gave_up=True)
        return True

    def _count_unreached(self, machine_id: str, *, gave_up: bool) -> None:
        self._judged.add(machine_id)
        self.streak += 1
        self.unreached += 1
        self.gave_up = self.gave_up or gave_up


def unreachable_message(
    advertise_url: str, *, app: str, unreached: int, reached_before: bool
) -> str:
    """One line: what happened, the URL the machines were given, and the fixes. (A machine
    that crashed before its worker's first claim looks the same from here: the line says
    where to look.)"""
    if reached_before:
        what = f"{unreached} Fly machines in a row never reached this coordinator"
    else:
        what = "the first Fly machine never reached this coordinator"
    return (
        f"{what} at {advertise_url} (every machine destroyed): machines must reach that URL. "
        "Bring up a Fly WireGuard peer (fly wireguard create ORG REGION laptop laptop.conf; "
        "wg-quick up ./laptop.conf) and run with --host :: --port PORT --advertise-url "
        "http://laptop._peer.internal:PORT, or pass a tunnel's public URL as --advertise-url; "
        f"'whisperfarm machines check' tests this in about a minute ('fly logs -a {app}' "
        "shows whether a machine crashed instead)"
    )
