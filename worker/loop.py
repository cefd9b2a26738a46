"""The worker loop: claim a batch → fetch its audio → transcribe it (heartbeating each
lease) → post each result, until the coordinator says all work is done. With prefetch,
the next batch is claimed and its audio fetched while this one decodes.

A worker that can't load the model a job names fails that job with the reason (one
attempt spent) and exits: staying would fail the farm's chunks one after another far
faster than healthy workers finish them, until every chunk is dead.

Signal handlers only set the ``stopping`` flag. The transcription checks it between
windows (with word timestamps: between segments); a stopping worker hands its chunks back at once
(release), the prefetched ones too, instead of leaving them to a lease expiry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from worker.audio import decode
from worker.client import CoordinatorClient, CoordinatorError, LeaseLostError
from worker.models import ModelLoadError
from worker.transcriber import Stopped, Transcriber
from worker.wire import ClaimReply, DecodeOptions, Job, ResultModel, WorkerModel

log = logging.getLogger("worker")

EXIT_DONE = 0
EXIT_STOPPED = 0
EXIT_UNREACHABLE = 3
EXIT_MODEL = 4  # this worker can't load the model the farm runs
EXIT_UNAUTHORIZED = 5
EXIT_PROTOCOL = 6


class Heartbeat(threading.Thread):
    """Extends the job's lease every ``interval`` seconds; sets ``lost`` on a 409."""

    def __init__(self, client: CoordinatorClient, job: Job, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{job.chunk_id}")
        self.client, self.job, self.interval = client, job, interval
        self.lost = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.heartbeat(self.job)
            except LeaseLostError:
                self.lost.set()
                return
            except (CoordinatorError, httpx.HTTPError) as error:
                log.warning("heartbeat for chunk %s failed: %s", self.job.chunk_id, error)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Taken:
    """A claimed job whose lease is being heartbeated, with its audio once it came."""

    job: Job
    heartbeat: Heartbeat
    audio: np.ndarray | None = None

    @property
    def name(self) -> str:
        job = self.job
        return f"chunk {job.episode_id}#{job.idx} (attempt {job.attempt})"


def _settings(job: Job) -> tuple[Any, ...]:
    """What a batch's jobs must share to be decoded together: the model and every
    decoding option."""
    return (job.model, *(getattr(job, name) for name in DecodeOptions.model_fields))


class Worker:
    def __init__(
        self,
        client: CoordinatorClient,
        transcriber: Transcriber,
        info: WorkerModel,
        *,
        batch_size: int = 1,
        prefetch: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        """The worker stops when ``request_stop`` is called (a signal): it sets the
        client's ``stopping``, which also ends the client's retries."""
        self.client = client
        self.transcriber = transcriber
        self.info = info
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.clock = clock
        self.stopping = client.stopping
        self.chunks_done = 0
        self.exit_code = EXIT_STOPPED

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Claim, decode and post batches until the coordinator says done. With
        ``prefetch``, the next batch is claimed and its audio downloaded (its leases
        heartbeated) while this one decodes; a stopping worker hands it back unopened."""
        ahead: Future[tuple[ClaimReply, list[Taken]]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
            try:
                while not self.stopping.is_set():
                    current, ahead = ahead, None
                    reply, batch = current.result() if current else self._claim()
                    if current is not None and reply.status == "wait":
                        # asked while this worker's own batch still ran: stale once it is
                        # posted (the run may be done, its coordinator about to exit)
                        reply, batch = self._claim()
                    if reply.status == "done":
                        log.info("no work left after %d chunks; exiting", self.chunks_done)
                        return EXIT_DONE
                    if not batch:
                        if reply.status == "wait":
                            self.stopping.wait(reply.retry_after)
                        continue
                    if self.prefetch:
                        ahead = pool.submit(self._claim)
                    self._decode(batch)
            finally:
                if ahead is not None:
                    self._hand_back(ahead)
        log.info("stopped after %d chunks", self.chunks_done)
        return self.exit_code

    def _hand_back(self, ahead: Future[tuple[ClaimReply, list[Taken]]]) -> None:
        """Release the prefetched batch unopened (its claim's error is the loop's own,
        already on its way out, or moot)."""
        try:
            _, unopened = ahead.result()
        except (CoordinatorError, httpx.HTTPError) as error:
            log.warning("the prefetch claim failed as the worker stopped: %s", error)
            return
        for taken in unopened:
            self._release(taken)

    def _claim(self) -> tuple[ClaimReply, list[Taken]]:
        """A claim for a batch, and its jobs taken (heartbeats started, audio in)."""
        if self.stopping.is_set():
            return ClaimReply(status="wait", retry_after=0.0), []
        reply = self.client.claim(self.info, max_jobs=self.batch_size)
        return reply, self._take(reply.jobs)

    def run_job(self, job: Job) -> None:
        """Transcribe one claimed job and post its result."""
        self._decode(self._take([job]))

    def _take(self, jobs: list[Job]) -> list[Taken]:
        """The jobs with their audio, each lease heartbeated from now on. A job whose
        lease went before its audio came is dropped; one whose audio is bad fails."""
        taken = []
        for job in jobs:
            heartbeat = Heartbeat(self.client, job, max(0.5, job.lease_seconds / 3))
            heartbeat.start()
            taken.append(Taken(job, heartbeat))
        ready = []
        for item in taken:
            try:
                item.audio = decode(self.client.audio(item.job))
            except LeaseLostError:
                log.warning("%s: lease lost before the audio came; dropped", item.name)
                item.heartbeat.stop()
                continue
            except (CoordinatorError, httpx.HTTPError):
                for other in taken:
                    other.heartbeat.stop()
                raise
            except Exception as error:  # a bad chunk must not kill the worker
                log.exception("%s failed", item.name)
                item.heartbeat.stop()
                self._fail(item, f"{type(error).__name__}: {error}")
                continue
            ready.append(item)
        return ready

    def _decode(self, batch: list[Taken]) -> None:
        """Decode the batch, jobs that share their settings together, and post results."""
        groups: dict[tuple[Any, ...], list[Taken]] = {}
        for taken in batch:
            groups.setdefault(_settings(taken.job), []).append(taken)
        for group in groups.values():
            if self.stopping.is_set() and self.exit_code == EXIT_MODEL:
                for taken in group:  # this worker can't run the farm's model: hand back
                    taken.heartbeat.stop()
                    self._release(taken)
                continue
            self._decode_group(group)

    def _decode_group(self, group: list[Taken]) -> None:
        first = group[0].job
        audios = [taken.audio for taken in group if taken.audio is not None]
        # One chunk goes through ``transcribe``, the one method every transcriber has
        # (scripts/sim_worker.py's too); several through ``transcribe_batch``.
        decode: Callable[..., list[ResultModel]]
        if len(audios) == 1:
            one = self.transcriber.transcribe
            decode = lambda audios, **options: [one(audios[0], **options)]  # noqa: E731
        else:
            decode = self.transcriber.transcribe_batch
        started = self.clock()
        try:
            results = decode(
                audios,
                model=first.model,
                options=first,
                should_stop=lambda: (
                    self.stopping.is_set() or all(taken.heartbeat.lost.is_set() for taken in group)
                ),
            )
        except Stopped:
            for taken in group:
                taken.heartbeat.stop()
                if taken.heartbeat.lost.is_set():
                    log.warning("%s: lease lost to another worker; dropped", taken.name)
                else:
                    self._release(taken)
            return
        except ModelLoadError as error:  # this worker can't run the job's model
            log.error("%s: %s; this worker leaves the farm", group[0].name, error)
            self._fail(group[0], str(error))
            for taken in group[1:]:
                self._release(taken)
            for taken in group:
                taken.heartbeat.stop()
            self.exit_code = EXIT_MODEL
            self.stopping.set()
            return
        except (CoordinatorError, httpx.HTTPError):
            for taken in group:
                taken.heartbeat.stop()
            raise
        except Exception as error:  # a bad chunk must not kill the worker
            if len(group) > 1:  # which one? each alone says
                for taken in group:
                    self._decode_group([taken])
                return
            log.exception("%s failed", group[0].name)
            group[0].heartbeat.stop()
            self._fail(group[0], f"{type(error).__name__}: {error}")
            return
        busy = self.clock() - started
        total = sum(len(taken.audio) for taken in group if taken.audio is not None) or 1
        for taken, result in zip(group, results, strict=True):
            taken.heartbeat.stop()
            share = busy * len(taken.audio) / total if taken.audio is not None else 0.0
            self._post(taken, result, share)

    def _post(self, taken: Taken, result: ResultModel, busy: float) -> None:
        if taken.heartbeat.lost.is_set():
            log.warning("%s: lease lost to another worker; dropped", taken.name)
            return
        try:
            reply = self.client.post_result(taken.job, result, busy)
        except LeaseLostError:
            log.warning("%s: finished, but another attempt owns it now; result refused", taken.name)
            return
        self.chunks_done += 1
        log.info("%s: %s in %.1fs", taken.name, reply.get("status", "stored"), busy)

    def _release(self, taken: Taken) -> None:
        taken.heartbeat.stop()
        try:
            self.client.release(taken.job)
            log.info("%s: handed back", taken.name)
        except (CoordinatorError, httpx.HTTPError) as error:
            log.warning("%s: could not hand back (%s); its lease will expire", taken.name, error)

    def _fail(self, taken: Taken, error: str) -> None:
        try:
            self.client.fail(taken.job, error)
        except (CoordinatorError, httpx.HTTPError) as report_error:
            log.warning("could not report the failure: %s", report_error)
