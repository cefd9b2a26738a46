"""The worker loop: claim → fetch audio → transcribe (heartbeating) → post, until the
coordinator says all work is done.

A worker that can't load the model a job names fails that job with the reason (one
attempt spent) and exits: staying would fail the farm's chunks one after another far
faster than healthy workers finish them, until every chunk is dead.

Signal handlers only set the ``stopping`` flag. The transcription checks it between
segments; a stopping worker hands its chunk back at once (release) instead of leaving
it to a lease expiry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from worker.audio import decode
from worker.client import CoordinatorClient, CoordinatorError, LeaseLostError
from worker.models import ModelLoadError
from worker.transcriber import Stopped, Transcriber
from worker.wire import Job, WorkerModel

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


class Worker:
    def __init__(
        self,
        client: CoordinatorClient,
        transcriber: Transcriber,
        info: WorkerModel,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.transcriber = transcriber
        self.info = info
        self.clock = clock
        self.stopping = threading.Event()
        self.chunks_done = 0
        self.exit_code = EXIT_STOPPED

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        while not self.stopping.is_set():
            reply = self.client.claim(self.info)
            if reply.status == "done":
                log.info("no work left after %d chunks; exiting", self.chunks_done)
                return EXIT_DONE
            if reply.status == "wait" or reply.job is None:
                self.stopping.wait(reply.retry_after)
                continue
            self.run_job(reply.job)
        log.info("stopped after %d chunks", self.chunks_done)
        return self.exit_code

    def run_job(self, job: Job) -> None:
        chunk = f"chunk {job.episode_id}#{job.idx} (attempt {job.attempt})"
        heartbeat = Heartbeat(self.client, job, max(0.5, job.lease_seconds / 3))
        heartbeat.start()
        started = self.clock()
        try:
            audio = decode(self.client.audio(job))
            result = self.transcriber.transcribe(
                audio,
                model=job.model,
                options=job,
                should_stop=lambda: self.stopping.is_set() or heartbeat.lost.is_set(),
            )
        except Stopped:
            if heartbeat.lost.is_set():
                log.warning("%s: lease lost to another worker; dropped", chunk)
            else:
                self._release(job, chunk)
            return
        except LeaseLostError:
            log.warning("%s: lease lost before the audio came; dropped", chunk)
            return
        except ModelLoadError as error:  # this worker can't run the job's model
            log.error("%s: %s; this worker leaves the farm", chunk, error)
            self._fail(job, str(error))
            self.exit_code = EXIT_MODEL
            self.stopping.set()
            return
        except (CoordinatorError, httpx.HTTPError):
            raise
        except Exception as error:  # a bad chunk must not kill the worker
            log.exception("%s failed", chunk)
            self._fail(job, f"{type(error).__name__}: {error}")
            return
        finally:
            heartbeat.stop()
        busy = self.clock() - started
        try:
            reply = self.client.post_result(job, result, busy)
        except LeaseLostError:
            log.warning("%s: finished, but another attempt owns it now; result refused", chunk)
            return
        self.chunks_done += 1
        log.info("%s: %s in %.1fs", chunk, reply.get("status", "stored"), busy)

    def _release(self, job: Job, chunk: str) -> None:
        try:
            self.client.release(job)
            log.info("%s: handed back", chunk)
        except (CoordinatorError, httpx.HTTPError) as error:
            log.warning("%s: could not hand back (%s); its lease will expire", chunk, error)

    def _fail(self, job: Job, error: str) -> None:
        try:
            self.client.fail(job, error)
        except (CoordinatorError, httpx.HTTPError) as report_error:
            log.warning("could not report the failure: %s", report_error)
