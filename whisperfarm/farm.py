"""A transcription run: register the episodes, serve their chunks, let workers steal them,
stitch each episode as soon as its last chunk is in.

    Farm.transcribe(paths)
      ├── check every input and the model up front (clear errors, nothing started)
      ├── register episodes in the ledger (content hash + model → resume)
      ├── start the coordinator (thread) and the local workers (processes)
      ├── cut and queue chunks in a background thread while workers already work
      └── watch the ledger: stitch and write each finished episode; stop when all are
          finished, or every worker is gone, or the user presses Ctrl-C (or the CLI gets
          SIGTERM or SIGHUP: see interrupts.py); whatever ends it, stop every worker

The fleet that runs the workers is a ``Fleet`` (local processes here; Fly machines in
``whisperfarm.fly``), so this module never knows where workers run.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from whisperfarm.assembly import assemble
from whisperfarm.calibration import measure_run
from whisperfarm.chunking import CutterConfig
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.errors import (
    BudgetReached,
    InputError,
    Interrupted,
    ModelError,
    UsageError,
    WorkersLost,
)
from whisperfarm.fly.store import MachineStore
from whisperfarm.ingest import EpisodeRequest, chunk_episode, register
from whisperfarm.interrupts import StopSignal, as_stop_signal, held
from whisperfarm.ledger import EpisodeProgress, EpisodeRecord, Ledger
from whisperfarm.media import check_input
from whisperfarm.processes import process_alive
from whisperfarm.reclaim import drop_chunk_audio
from whisperfarm.server import BackgroundServer, bind
from whisperfarm.settings import Settings
from whisperfarm.speech import SpeechConfig
from whisperfarm.states import ChunkState, EpisodeState, RunState
from whisperfarm.transcripts import write_outputs
from worker.audio import ChunkFormat
from worker.models import bundled_tiny_en, resolve_model
from worker.wire import WAIT_SECONDS

DONE_GRACE = 5.0
"""Seconds a finished run keeps serving so that workers still attached hear "done"."""
DONE_POLL = 0.1
ATTACHED_WITHIN = 3 * WAIT_SECONDS
"""A worker that claimed this recently is still attached: an idle one asks every
WAIT_SECONDS."""


@dataclass
class EpisodeStatus:
    id: str
    name: str
    state: str
    progress: EpisodeProgress
    duration: float | None = None
    error: str | None = None
    files: list[Path] = field(default_factory=list)
    reused: EpisodeProgress | None = None
    """What the ledger held done before this run: chunk results reused, not transcribed."""

    @property
    def reused_chunks(self) -> int:
        return self.reused.done if self.reused is not None else 0

    @property
    def transcribed_audio(self) -> float:
        """Seconds of chunk audio transcribed in this run."""
        before = self.reused.audio_done if self.reused is not None else 0.0
        return max(0.0, self.progress.audio_done - before)


@dataclass
class RunSummary:
    run_id: str
    episodes: list[EpisodeStatus]
    wall_seconds: float

    @property
    def audio_seconds(self) -> float:
        return sum(e.duration or 0.0 for e in self.episodes)

    @property
    def failed(self) -> list[EpisodeStatus]:
        return [e for e in self.episodes if e.state != EpisodeState.DONE]


class Reporter(Protocol):
    def coordinator_ready(self, url: str, token: str, fleet: str) -> None: ...
    def update(self, episodes: list[EpisodeStatus]) -> None: ...
    def episode_finished(self, episode: EpisodeStatus) -> None: ...


class Fleet(Protocol):
    """Where workers run. ``start`` is called once the coordinator listens."""

    description: str

    def start(self, url: str, token: str, model: str) -> None: ...
    def check(self, ledger: Ledger, work_left: bool) -> None:
        """Called every tick; raise WorkersLost when no worker can finish the work."""

    def stop(self) -> None: ...

    def gone_workers(self) -> list[str]:
        """After ``stop``: ids of this fleet's workers known to be gone for good (their
        process exited, their machine was destroyed), whose leases are void."""

    def stopped(self) -> str:
        """After ``stop``: what stopping ended, e.g. "destroyed 3 Fly machines"; "" if
        nothing."""


class Fleets:
    """Several fleets as one: local workers and Fly machines steal from the same queue."""

    def __init__(self, *fleets: Fleet):
        self.fleets = fleets
        self.description = " + ".join(f.description for f in fleets)

    def start(self, url: str, token: str, model: str) -> None:
        for fleet in self.fleets:
            fleet.start(url, token, model)

    def check(self, ledger: Ledger, work_left: bool) -> None:
        """Every fleet's check. One whose workers are all gone ends the run only when the
        others' are too: Fly machines still on their way finish what a lost local worker
        left, and their fleet fails by itself if it can't get machines."""
        lost: list[WorkersLost] = []
        for fleet in self.fleets:
            try:
                fleet.check(ledger, work_left)
            except WorkersLost as error:
                lost.append(error)
        if lost and len(lost) == len(self.fleets):
            raise lost[0]

    def stop(self) -> None:
        errors = []
        for fleet in self.fleets:
            try:
                fleet.stop()
            except Exception as error:  # stop every fleet, then report
                errors.append(error)
        if errors:
            raise errors[0]

    def gone_workers(self) -> list[str]:
        return [worker for fleet in self.fleets for worker in fleet.gone_workers()]

    def stopped(self) -> str:
        return ", ".join(filter(None, (fleet.stopped() for fleet in self.fleets)))


def resolve_model_for_run(model: str) -> str:
    """Where ``model`` is on this machine, fetching it into the cache local workers read
    when it is a name. Fails here, once, rather than in every worker."""
    resolved = resolve_model(model)
    path = Path(resolved)
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise ModelError(
                f"{path} has no model.bin: give a CTranslate2 (faster-whisper) model directory"
            )
        return str(path.resolve())
    # faster-whisper (CTranslate2, tokenizers) takes a second to import: only when needed.
    from faster_whisper.utils import available_models, download_model

    if model not in available_models():
        raise ModelError(
            f"unknown model {model!r}: use a faster-whisper name "
            f"({', '.join(available_models()[:6])}, …) or a model directory"
        )
    try:
        return str(download_model(model))
    except Exception as error:
        hint = ", or --model tiny.en (bundled)" if bundled_tiny_en() else ""
        raise ModelError(
            f"can't get model {model!r} ({str(error).splitlines()[0] if str(error) else error}): "
            f"check the network, or pass a local model directory with --model PATH{hint}"
        ) from error


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Farm:
    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        reporter: Reporter,
        *,
        run_id: str,
        chunk_format: ChunkFormat,
        fleet_size: int,
        tick: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.run_id = run_id
        self.chunk_format = chunk_format
        self.fleet_size = fleet_size
        self.settings = settings
        self.fleet = fleet
        self.reporter = reporter
        self.tick = tick
        self.sleep = sleep

    def transcribe(
        self, paths: list[Path], out_dir: Path, formats: list[str], *, queued: Collection[Path] = ()
    ) -> RunSummary:
        """Transcribe ``paths`` with the settings' decoding options; those also in
        ``queued`` (taken from the ledger's queue) with the options their episodes
        recorded."""
        started = time.monotonic()
        settings = self.settings
        infos = [check_input(path) for path in paths]
        stems = [path.stem for path in paths]
        clash = {stem for stem in stems if stems.count(stem) > 1}
        if clash:
            raise UsageError(
                f"two inputs would both write {out_dir / next(iter(clash))}.*: "
                "rename one, or transcribe them in separate runs with different --out"
            )
        resolve_model_for_run(settings.model)  # fetched once, here: workers find it cached
        options = settings.decoding().options()
        requests = [
            EpisodeRequest(path, info, settings.model, None if path in queued else options)
            for path, info in zip(paths, infos, strict=True)
        ]
        with Ledger(settings.ledger_path) as ledger:
            statuses = self._run(ledger, requests, out_dir, formats)
        return RunSummary(self.run_id, statuses, time.monotonic() - started)

    def _run(
        self, ledger: Ledger, requests: list[EpisodeRequest], out_dir: Path, formats: list[str]
    ) -> list[EpisodeStatus]:
        """Register, serve, watch and finish the episodes of ``requests``; whatever ends
        it, stop every worker and record how the run ended."""
        settings = self.settings
        run_id = self.run_id
        token = new_token()
        # Outputs are named after each input, whatever name the ledger first saw its
        # content under; two inputs with the same content share one episode.
        stems: dict[str, list[str]] = {}
        unique: list[EpisodeRequest] = []
        registered: list[tuple[str, bool]] = []
        for request in requests:
            episode_id, needs_chunking = register(ledger, request)
            if episode_id not in stems:
                stems[episode_id] = []
                unique.append(request)
                registered.append((episode_id, needs_chunking))
            stems[episode_id].append(request.path.stem)
        episode_ids = list(stems)
        reused = {episode_id: ledger.progress(episode_id) for episode_id in episode_ids}
        _refuse_concurrent_runs(ledger, episode_ids)
        ledger.start_run(run_id, backend=settings.backend, episode_ids=episode_ids, pid=os.getpid())

        coordinator = CoordinatorConfig(
            ledger_path=settings.ledger_path,
            token=token,
            scope=lambda: episode_ids,
            episodes_dir=settings.episodes_dir,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            backups=settings.backups,
            fleet_size=self.fleet_size,
        )
        server = BackgroundServer(create_app(coordinator), bind(settings.host, settings.port))
        cancel = threading.Event()
        ingest_errors: dict[str, str] = {}
        state = RunState.FAILED
        stopped_by: StopSignal | None = None
        try:
            server.start()
            url = f"http://{_url_host(settings.host)}:{server.port}"
            ledger.set_run_url(run_id, url)
            self.reporter.coordinator_ready(url, token, self.fleet.description)
            self.fleet.start(url, token, settings.model)
            ingest = threading.Thread(
                target=self._ingest_all,
                args=(unique, registered, cancel, ingest_errors),
                daemon=True,
                name="ingest",
            )
            ingest.start()
            statuses = self._watch(
                ledger, stems, out_dir, formats, ingest_errors, coordinator.settled
            )
            for status in statuses:
                status.reused = reused[status.id]
            self._let_workers_hear_done(coordinator)
            finished = all(s.state == EpisodeState.DONE for s in statuses)
            state = RunState.DONE if finished else RunState.FAILED
        except BudgetReached:
            state = RunState.BUDGET
            raise
        except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM, SIGHUP (interrupts.py)
            state = RunState.INTERRUPTED
            cancel.set()
            stopped_by = as_stop_signal(interrupt)
        finally:
            with held():  # a second signal must not cut the cleanup short
                cancel.set()
                self.fleet.stop()
                # A worker stopped mid-chunk hands it back itself; one that could not
                # (killed, machine destroyed) must not leave its chunk leased until the
                # lease expires.
                ledger.release_leases(self.fleet.gone_workers())
                server.stop()
                coordinator.close()
                _measure(ledger, run_id)
                ledger.end_run(run_id, state, spent=MachineStore(ledger).spend(run_id))
        if stopped_by is not None:
            # Counted once the workers have stopped: the chunks they finished on their way
            # out (a batch's last window) are done too.
            progress = [ledger.progress(e) for e in episode_ids]
            done, total = sum(p.done for p in progress), sum(p.total for p in progress)
            ended = self.fleet.stopped()
            raise Interrupted(
                f"stopped by {stopped_by.label} with {done} of {total} chunks done"
                f"{f': {ended}' if ended else ''}; run the same command again to resume",
                exit_code=stopped_by.exit_code,
            )
        return statuses

    def _let_workers_hear_done(self, coordinator: CoordinatorConfig) -> None:
        """Keep serving, for at most DONE_GRACE seconds, until every worker still attached
        (one that claimed lately and was told to wait) has claimed again and been told
        "done": a worker that joined with the printed command then exits 0, where it would
        find the coordinator gone and retry until it gives up."""
        for _ in range(round(DONE_GRACE / DONE_POLL)):
            if not coordinator.attached.not_told_done(within=ATTACHED_WITHIN):
                return
            self.sleep(DONE_POLL)

    def _ingest_all(
        self,
        requests: list[EpisodeRequest],
        registered: list[tuple[str, bool]],
        cancel: threading.Event,
        errors: dict[str, str],
    ) -> None:
        settings = self.settings
        config = cutter_config(settings)
        with Ledger(settings.ledger_path) as ledger:
            for request, (episode_id, needs_chunking) in zip(requests, registered, strict=True):
                if cancel.is_set():
                    return
                if not needs_chunking:
                    continue
                try:
                    chunk_episode(
                        ledger,
                        episode_id,
                        request,
                        chunks_dir=settings.episodes_dir / episode_id / "chunks",
                        config=config,
                        cancel=cancel,
                        chunk_format=self.chunk_format,
                    )
                except InterruptedError:
                    return
                except (InputError, OSError) as error:
                    errors[episode_id] = str(error)
                    ledger.fail_chunking(episode_id, error=str(error))

    def _watch(
        self,
        ledger: Ledger,
        stems: dict[str, list[str]],
        out_dir: Path,
        formats: list[str],
        ingest_errors: dict[str, str],
        settled: threading.Event,
    ) -> list[EpisodeStatus]:
        """Watch the episodes (by id, each with the names its outputs take) until every
        one is finished: every tick, and at once when ``settled`` says a chunk was."""
        finished: dict[str, EpisodeStatus] = {}
        while True:
            statuses = []
            work_left = False
            for episode_id, names in stems.items():
                if episode_id in finished:
                    statuses.append(finished[episode_id])
                    continue
                episode = ledger.episode(episode_id)
                progress = ledger.progress(episode_id)
                status = EpisodeStatus(
                    episode_id,
                    " + ".join(names),
                    episode["state"],
                    progress,
                    episode["duration"],
                    episode["error"] or ingest_errors.get(episode_id),
                )
                if episode["state"] == EpisodeState.FAILED:
                    finished[episode_id] = status
                    self.reporter.episode_finished(status)
                elif episode["state"] == EpisodeState.CHUNKING or not progress.finished:
                    work_left = True
                else:
                    self._finish(ledger, episode, status, out_dir, formats, names)
                    finished[episode_id] = status
                    self.reporter.episode_finished(status)
                statuses.append(status)
            self.reporter.update(statuses)
            if len(finished) == len(stems):
                return statuses
            self.fleet.check(ledger, work_left)
            settled.wait(self.tick)
            settled.clear()  # before the ledger is read again: no news is lost

    def _finish(
        self,
        ledger: Ledger,
        episode: EpisodeRecord,
        status: EpisodeStatus,
        out_dir: Path,
        formats: list[str],
        names: list[str],
    ) -> None:
        chunks = ledger.chunks(episode["id"])
        dead = [c for c in chunks if c["state"] == ChunkState.DEAD]
        if dead:
            first = dead[0]
            reason = (
                f"{len(dead)} chunk(s) failed after {self.settings.max_attempts} attempts "
                f"(chunk {first['idx']}: {first['error']}); "
                "run the same command again, or 'whisperfarm retry', to retry them"
            )
            ledger.update_episode(episode["id"], state=EpisodeState.FAILED, error=reason)
            status.state, status.error = EpisodeState.FAILED, reason
            return
        # Words as the episode was transcribed with (serve --queue keeps each one's options)
        words = bool(json.loads(episode["options"]).get("word_timestamps"))
        transcript = assemble(ledger, episode, keep_words=words)
        cues = self.settings.cue_style()
        status.files = [
            path
            for name in names
            for path in write_outputs(transcript, out_dir, name, formats, subtitles=cues)
        ]
        ledger.update_episode(episode["id"], state=EpisodeState.DONE, finished_at=ledger.clock())
        status.state = EpisodeState.DONE
        # Every chunk has its result: the audio is no longer needed (reclaim.py).
        drop_chunk_audio(self.settings.episodes_dir, episode["id"])


def chunk_format_for(settings: Settings, *, only_local_workers: bool) -> ChunkFormat:
    """The format chunks are written in: the setting, or for ``auto`` Opus where chunks
    cross a network (Fly machines, ``serve``, or ``--workers 0`` and workers from
    elsewhere) and WAV where only this machine's workers fetch them: over loopback bytes
    cost nothing, and encoding Opus would take about 40 CPU-seconds per audio hour from
    those workers (scripts/bench_audio.py)."""
    if settings.chunk_format != "auto":
        return ChunkFormat(settings.chunk_format)
    return ChunkFormat.WAV if only_local_workers else ChunkFormat.OPUS


def cutter_config(settings: Settings) -> CutterConfig:
    return CutterConfig(
        min_seconds=settings.chunk_min_seconds,
        max_seconds=settings.chunk_max_seconds,
        overlap_seconds=settings.overlap_seconds,
        speech=SpeechConfig() if settings.vad else None,
    )


def _measure(ledger: Ledger, run_id: str) -> None:
    """Fold the run's worker speeds into the calibrations (see calibration.py). A failure
    here must never fail the run."""
    try:
        measure_run(ledger, run_id)
    except Exception:  # the measurement is a bonus; the transcripts are what matter
        logging.getLogger("whisperfarm").warning("could not measure the run", exc_info=True)


def _refuse_concurrent_runs(ledger: Ledger, episode_ids: list[str]) -> None:
    for run in ledger.running_runs(episode_ids):
        if run["pid"] and process_alive(run["pid"]) and run["pid"] != os.getpid():
            raise UsageError(
                f"run {run['id']} (pid {run['pid']}) is already transcribing this episode: "
                "wait for it, or stop it first"
            )
        ledger.end_run(run["id"], RunState.CRASHED, spent=MachineStore(ledger).spend(run["id"]))


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
