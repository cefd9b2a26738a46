"""The worker's side of the coordinator API, over httpx, with retries (tenacity) for a
coordinator that is briefly unreachable or restarting, and a bounded time before giving up.

    CoordinatorError
    ├── Unauthorized        401: wrong token (never retried)
    ├── LeaseLostError      409: another attempt owns the chunk now
    └── Unreachable         transport errors / 5xx past ``give_up_seconds``, or once the
                            worker is stopping (``stopping``: its retries end at once)

Bodies and the claim's answer are the wire contract's models (``worker.wire``); a claim
answer that isn't one is a CoordinatorError too.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    stop_when_event_set,
)

from worker.audio import ChunkAudio, ChunkFormat
from worker.wire import (
    ClaimReply,
    ClaimRequest,
    FailureRequest,
    Job,
    Lease,
    LeaseRequest,
    ResultModel,
    ResultRequest,
    WorkerModel,
)

log = logging.getLogger("worker")


class CoordinatorError(Exception):
    pass


class Unauthorized(CoordinatorError):
    pass


class LeaseLostError(CoordinatorError):
    pass


class Unreachable(CoordinatorError):
    pass


class _StopRetrying(Exception):
    """The worker began to stop during a retry's pause."""


def _transient(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and (
        error.response.status_code >= 500 or error.response.status_code == 429
    )


def backoff(retry_state: RetryCallState) -> float:
    """0.5 s, 1 s, 2 s … doubling up to 10 s, each plus up to 1 s of jitter: tenacity's
    wait_exponential_jitter spelled out, because its first argument changed names within
    the versions pyproject allows (8.2 knows only ``initial``, 9.x deprecates it for
    ``multiplier``)."""
    attempt = retry_state.attempt_number
    return min(0.5 * 2 ** min(attempt - 1, 30) + random.uniform(0, 1.0), 10.0)


class CoordinatorClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        give_up_seconds: float = 120.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], object] | None = None,
        stopping: threading.Event | None = None,
    ):
        """``stopping``: the worker's stop request (a signal): once it is set, a request
        that fails is not tried again, and a retry's pause ends at once, so a worker
        that can't reach its coordinator still stops when told. ``sleep``: a retry's
        pause (default: waiting for ``stopping``, at most the backoff)."""
        self.http = http or httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, connect=5.0))
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.give_up_seconds = give_up_seconds
        self.stopping = stopping or threading.Event()
        self.sleep = sleep or self.stopping.wait

    def close(self) -> None:
        self.http.close()

    def _request(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        def once() -> httpx.Response:
            response = self.http.request(method, path, **kwargs)
            if response.status_code == 401:
                raise Unauthorized(
                    "the coordinator rejected the token: check the worker's token "
                    "(--token or WHISPERFARM_TOKEN) against the one 'whisperfarm "
                    "transcribe' or 'serve' printed"
                )
            if response.status_code == 409 or (
                response.status_code == 404 and path.startswith("/v1/jobs/")
            ):
                # 404: the job is gone (its episode was removed): as good as a lost lease.
                raise LeaseLostError(response.text)
            response.raise_for_status()
            return response

        if not retry:
            return once()
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.give_up_seconds) | stop_when_event_set(self.stopping),
            wait=backoff,
            sleep=self._pause,
            reraise=True,
            before_sleep=self._log_retry,
        )
        try:
            return retrying(once)
        except _StopRetrying:
            raise self._unreachable(None) from None
        except httpx.HTTPStatusError as error:
            if not _transient(error):
                raise CoordinatorError(
                    f"the coordinator refused {method} {path}: "
                    f"{error.response.status_code} {error.response.text[:300]}"
                ) from error
            raise self._unreachable(error) from error
        except httpx.TransportError as error:
            raise self._unreachable(error) from error

    def _log_retry(self, retry_state: RetryCallState) -> None:
        """Say so each time a request is retried: a worker pointed at a wrong URL must not
        sit silent until it gives up."""
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, httpx.HTTPStatusError):
            why = f"{error.response.status_code} {error.response.reason_phrase}"
        else:
            why = f"{type(error).__name__}: {error}"
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "coordinator at %s did not answer (%s); retrying in %.1fs, giving up %.0fs after "
            "the first try",
            self.http.base_url,
            why,
            wait,
            self.give_up_seconds,
        )

    def _pause(self, seconds: float) -> None:
        self.sleep(seconds)
        if self.stopping.is_set():
            raise _StopRetrying()

    def _unreachable(self, error: Exception | None) -> Unreachable:
        if self.stopping.is_set():
            why = f" ({error})" if error is not None else ""
            return Unreachable(
                f"coordinator at {self.http.base_url} did not answer{why}; "
                "stopping as asked, without retrying"
            )
        return Unreachable(
            f"coordinator at {self.http.base_url} unreachable for "
            f"{self.give_up_seconds:.0f}s ({error}); giving up"
        )

    def _post(self, path: str, body: BaseModel, *, retry: bool = True) -> httpx.Response:
        # exclude_unset: the body carries exactly the fields its sender gave (worker.wire)
        payload = body.model_dump(mode="json", exclude_unset=True)
        return self._request("POST", path, json=payload, retry=retry)

    # The bodies are built without validation (model_construct): the coordinator validates
    # them and answers 422 to one it refuses, as it did when they were plain dicts. What
    # the coordinator sends back, the worker validates (ClaimReply).

    def claim(self, worker: WorkerModel, *, max_jobs: int = 1) -> ClaimReply:
        """Up to ``max_jobs`` jobs (a claim of one sends the body it always has)."""
        body = ClaimRequest.model_construct(worker=worker)
        if max_jobs != 1:
            body = ClaimRequest.model_construct(worker=worker, max_jobs=max_jobs)
        answer = self._post("/v1/claim", body).json()
        try:
            return ClaimReply.model_validate(answer)
        except ValidationError as error:
            raise CoordinatorError(
                "the coordinator's answer to a claim is not one this worker reads "
                f"({error.errors(include_url=False)[0]['msg']}): run a worker image of the "
                "coordinator's version"
            ) from error

    def audio(self, job: Job | Lease) -> ChunkAudio:
        response = self._request(
            "GET",
            f"/v1/jobs/{job.chunk_id}/audio",
            headers={"X-Lease-Token": job.lease_token},
        )
        # No content type: a coordinator from before compact chunks, which sent WAV.
        content_type = response.headers.get("content-type", ChunkFormat.WAV.content_type)
        return ChunkAudio(response.content, content_type)

    def heartbeat(self, job: Job | Lease) -> dict[str, Any]:
        body = LeaseRequest.model_construct(lease_token=job.lease_token)
        return self._post(f"/v1/jobs/{job.chunk_id}/heartbeat", body, retry=False).json()

    def post_result(
        self, job: Job | Lease, result: ResultModel, busy_seconds: float
    ) -> dict[str, Any]:
        body = ResultRequest.model_construct(
            lease_token=job.lease_token, result=result, busy_seconds=busy_seconds
        )
        return self._post(f"/v1/jobs/{job.chunk_id}/result", body).json()

    def fail(self, job: Job | Lease, error: str) -> dict[str, Any]:
        body = FailureRequest.model_construct(lease_token=job.lease_token, error=error)
        return self._post(f"/v1/jobs/{job.chunk_id}/failure", body).json()

    def release(self, job: Job | Lease) -> None:
        body = LeaseRequest.model_construct(lease_token=job.lease_token)
        self._post(f"/v1/jobs/{job.chunk_id}/release", body, retry=False)
