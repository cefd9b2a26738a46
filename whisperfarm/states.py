"""The states a chunk, an episode, a run and a Fly machine can be in: one home for each name.

They are StrEnums, so a member *is* its string: the ledger stores the same values it always
did (no migration), rows read back compare equal to the members, and SQL text may still
spell a value where a query needs it (``WHERE state = 'leased'``).
"""

from __future__ import annotations

from enum import StrEnum


class ChunkState(StrEnum):
    """A chunk job in the queue (see ``whisperfarm.ledger``'s docstring for the moves)."""

    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class EpisodeState(StrEnum):
    CHUNKING = "chunking"  # being cut; chunks still arrive
    QUEUED = "queued"  # cut; its chunks are in the queue
    DONE = "done"  # stitched
    FAILED = "failed"


class RunState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BUDGET = "budget"  # stopped at its spending limit
    INTERRUPTED = "interrupted"  # Ctrl-C or a signal
    CRASHED = "crashed"  # its process died without ending it


class MachineState(StrEnum):
    """What Fly says of a machine (the Machines API's states), as the ledger records it."""

    CREATED = "created"
    CREATING = "creating"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    FAILED = "failed"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    REPLACING = "replacing"
    UPDATING = "updating"
    LAUNCH_FAILED = "launch_failed"


# A machine in one of these bills no CPU or RAM: its billed interval ends when first seen so.
MACHINE_ENDED = frozenset(
    {MachineState.STOPPED, MachineState.FAILED, MachineState.DESTROYED, MachineState.SUSPENDED}
)
