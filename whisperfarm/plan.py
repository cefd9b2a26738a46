"""Planning a run before anything starts: the files it transcribes, the model, its run id,
the local workers and their threads, and on Fly the machines and what they will cost.

``transcribe`` and ``serve`` both plan here, then print, ask and start; nothing here
prints, asks, or calls Fly's API (a warm-pool count and a calibration are read from the
ledger, when there is one).

    plan_run(settings, inputs)               → RunPlan   (for transcribe)
    plan_run(settings, inputs, serving=True) → RunPlan   (for serve; queue=True: the queue too)
    fleets(plan, client)                     → the run's fleets, local workers first
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from whisperfarm.errors import InputError
from whisperfarm.farm import Farm, Fleet, Fleets, Reporter, chunk_format_for
from whisperfarm.ledger import Ledger
from whisperfarm.local import LocalFleet
from whisperfarm.media import check_input
from whisperfarm.settings import Settings
from whisperfarm.spawn import StandbyWorkers, local_layout
from whisperfarm.states import EpisodeState
from worker.audio import ChunkFormat

if TYPE_CHECKING:  # the Fly layer (httpx and its client) loads only for a run on Fly
    from whisperfarm.fly.client import MachinesClient
    from whisperfarm.fly.config import FlyConfig
    from whisperfarm.fly.fleet import FlyFleet
    from whisperfarm.fly.policy import Plan


def new_run_id(prefix: str = "") -> str:
    """A fresh run id: eight hex digits (after ``prefix``). It names the run in the ledger,
    its workers, its logs and its Fly machines; every run id is minted here."""
    return prefix + secrets.token_hex(4)


@dataclass(frozen=True)
class FlyPlan:
    """What a run on Fly Machines will do, worked out before any API call."""

    config: FlyConfig
    audio_seconds: float
    ready: int
    """Warm-pool machines the run can start at once, as the ledger last saw them."""
    estimate: Plan

    def describe(self) -> str:
        from whisperfarm.fly.config import describe_plan

        return describe_plan(self.config, self.estimate, self.audio_seconds, ready=self.ready)


@dataclass(frozen=True)
class RunPlan:
    settings: Settings
    inputs: list[Path]
    run_id: str
    workers: int
    """Local worker processes; 0: none (outside workers, or Fly machines, do the work)."""
    threads: int
    """CPU threads per local worker."""
    compute_type: str
    """What the local workers load the model as."""
    fly: FlyPlan | None = None
    rejected: list[str] = field(default_factory=list)
    """One line for each input left out of the run: why it can't be transcribed."""
    serving: bool = False
    """``serve``: the coordinator for workers from anywhere."""
    queued: list[Path] = field(default_factory=list)
    """Inputs taken from the ledger's queue (``serve --queue``): their episodes keep the
    decoding options they were queued with."""

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def only_local(self) -> bool:
        """Whether only this machine's workers do the work (``serve`` is for workers from
        elsewhere; Fly machines are elsewhere)."""
        return not self.serving and self.fly is None and self.workers > 0

    @property
    def chunk_format(self) -> ChunkFormat:
        """How the chunks are written: compact unless only this machine's workers fetch
        them."""
        return chunk_format_for(self.settings, only_local_workers=self.only_local)

    @property
    def fleet_size(self) -> int:
        """The workers the run expects at most: its local workers and the Fly machines it
        plans. Batched claims are shared among them (``ledger.shares``), so the first of a
        hundred planned machines takes 2 of a 1-hour episode's 144 chunks, not 4."""
        return self.workers + (self.fly.estimate.machines if self.fly is not None else 0)

    def farm(self, fleet: Fleet, reporter: Reporter) -> Farm:
        """The farm that runs this plan on ``fleet``, reporting to ``reporter``."""
        return Farm(
            self.settings,
            fleet,
            reporter,
            run_id=self.run_id,
            chunk_format=self.chunk_format,
            fleet_size=self.fleet_size,
        )


def plan_run(
    settings: Settings,
    inputs: Sequence[Path],
    *,
    serving: bool = False,
    queue: bool = False,
    workers: int = 0,
    cpus: int | None = None,
) -> RunPlan:
    """The plan for a run of ``inputs`` with ``settings`` on a machine with ``cpus`` cores
    (default: this one's).

    ``transcribe``: local workers as many as settings say, else one per core up to 4, then
    one per 2 cores (``spawn.local_layout``), each with an equal share of the cores; with
    ``backend = "fly"``, Fly machines and no local workers unless settings ask for them.

    ``serve`` (``serving=True``): the coordinator for outside workers, serving ``inputs``
    (and with ``queue``, every unfinished episode of the model whose file still exists),
    with ``workers`` local workers of one thread each.

    An input that can't be transcribed (missing, not audio, empty) is left out of the
    run, with one line saying why in ``rejected``: one bad file doesn't stop a batch.
    """
    run_id = new_run_id()
    inputs, rejected = readable(inputs)
    if serving:
        # serve's local workers are one thread each: the cores are left to the coordinator
        # and whatever else the box runs; each job says the compute type its model loads as.
        queued = [path for path in _unfinished_sources(settings) if path not in inputs]
        return RunPlan(
            settings,
            [*inputs, *queued] if queue else inputs,
            run_id,
            workers,
            1,
            settings.compute_type,
            rejected=rejected,
            serving=True,
            queued=queued if queue else [],
        )
    fly = _plan_fly(settings, inputs) if settings.backend == "fly" and inputs else None
    n_workers, n_threads = local_layout(cpus, settings.workers, settings.threads)
    if settings.workers is None and fly is not None:
        n_workers = 0  # on Fly, local workers only when asked for
    return RunPlan(
        settings, inputs, run_id, n_workers, n_threads, settings.compute_type, fly, rejected
    )


def fleets(
    plan: RunPlan,
    client: MachinesClient | None = None,
    *,
    standby: StandbyWorkers | None = None,
) -> tuple[Fleets, FlyFleet | None]:
    """The run's fleets as one (local workers first, from ``standby`` workers where it
    has them, then Fly machines through ``client``), and its Fly fleet alone, whose
    leftovers the caller reports. A run on Fly has local workers only when its plan has
    some."""
    settings = plan.settings
    parts: list[Fleet] = []
    fly = None
    if plan.workers or plan.fly is None:
        parts.append(
            LocalFleet(
                plan.workers,
                plan.threads,
                logs_dir=settings.logs_dir,
                run_id=plan.run_id,
                compute_type=plan.compute_type,
                batch_size=settings.batch_size,
                standby=standby,
            )
        )
    elif standby is not None:
        standby.dismiss()  # a run on Fly alone: no local worker will take one
    if plan.fly is not None:
        from whisperfarm.fly.fleet import FlyFleet

        if client is None:
            raise ValueError("a run on Fly needs a Machines API client")
        fly = FlyFleet(
            client, plan.fly.config, ledger_path=settings.ledger_path, run_id=plan.run_id
        )
        parts.append(fly)
    return Fleets(*parts), fly


def readable(inputs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The inputs that are audio ffmpeg can read, and a line for each of the others."""
    good: list[Path] = []
    rejected: list[str] = []
    for path in inputs:
        try:
            check_input(path)
        except InputError as error:
            rejected.append(str(error))
        else:
            good.append(path)
    return good, rejected


def _plan_fly(settings: Settings, inputs: Sequence[Path]) -> FlyPlan:
    from whisperfarm.calibration import for_settings
    from whisperfarm.fly.config import estimate, fly_config, pool_ready

    measured = for_settings(settings.model, settings.compute_type, settings.ledger_path)
    config = fly_config(settings, with_local_workers=bool(settings.workers), calibration=measured)
    audio = sum(check_input(path).duration or 0.0 for path in inputs)
    ready = pool_ready(settings, config)
    return FlyPlan(config, audio, ready, estimate(config, audio, ready=ready))


def _unfinished_sources(settings: Settings) -> list[Path]:
    """Source files of the ledger's unfinished episodes of ``settings.model`` that still exist."""
    with Ledger(settings.ledger_path) as ledger:
        return [
            Path(episode["source"])
            for episode in ledger.episodes()
            if episode["state"] != EpisodeState.DONE
            and episode["model"] == settings.model
            and Path(episode["source"]).is_file()
        ]
