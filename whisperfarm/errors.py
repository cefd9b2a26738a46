"""The errors whisperfarm raises on purpose, each with a message that names the fix.

    WhisperfarmError            base: the CLI prints str(error) in one red line, exits 1
    ├── UsageError              a flag or setting that can't work (exit 2)
    ├── InputError              a file that is missing, not audio, empty, truncated
    ├── ModelError              a model that can't be found or loaded
    ├── LedgerError             the ledger can't be opened or is from a newer version
    ├── EpisodeNotFound         no episode matches the id or name given
    ├── TranscriptionFailed     chunks died after their attempts; the episode is resumable
    ├── WorkersLost             every local worker exited while work remained
    ├── BudgetReached           spend hit the cap; the episode is resumable
    ├── MachinesCantReach       Fly machines never reached the coordinator's advertised URL
    ├── Interrupted             Ctrl-C, SIGTERM, SIGHUP: work so far is kept, rerun to resume
    │                           (exit 130, 143, 129: 128 + the signal's number)
    └── FlyError                the Machines API said no (see whisperfarm.fly.client)
        ├── FlyAuthError        401: wrong or missing FLY_API_TOKEN
        ├── FlyGPUUnsupported   400: Fly no longer offers GPU machines
        ├── FlyCapacityError    status "insufficient_capacity" (409/412/503): none now
        ├── FlyStartFailed      a start answered with status "error": it did not start
        └── FlyUnavailable      retries exhausted on 408/429/5xx/timeouts

Anything else reaching the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class WhisperfarmError(Exception):
    """Base class: an expected failure with a message a user can act on."""

    exit_code = 1


class UsageError(WhisperfarmError):
    exit_code = 2


class InputError(WhisperfarmError):
    pass


class ModelError(WhisperfarmError):
    pass


class LedgerError(WhisperfarmError):
    pass


class EpisodeNotFound(WhisperfarmError):
    pass


class TranscriptionFailed(WhisperfarmError):
    pass


class WorkersLost(WhisperfarmError):
    pass


class BudgetReached(WhisperfarmError):
    pass


class MachinesCantReach(WhisperfarmError):
    pass


class Interrupted(WhisperfarmError):
    """Stopped by a signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""

    exit_code = 130

    def __init__(self, message: str, *, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class FlyError(WhisperfarmError):
    """The Machines API refused or failed a request."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None):
        if request_id:
            message = f"{message} (fly-request-id {request_id})"
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class FlyAuthError(FlyError):
    pass


class FlyGPUUnsupported(FlyError):
    pass


class FlyCapacityError(FlyError):
    pass


class FlyStartFailed(FlyError):
    pass


class FlyUnavailable(FlyError):
    pass
