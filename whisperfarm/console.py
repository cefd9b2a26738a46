"""What a run shows on the terminal: a live progress display on a terminal, plain lines
when stdout is a pipe or a file, nothing but errors with --quiet.

The display has one row per episode (chunks done, audio minutes, × realtime, ETA), a
line with the workers at work (local, joined from elsewhere, on Fly) and, when the run
has Fly machines, a line with the machines up and the spend against the budget, read
from the ledger (the same ``whisperfarm.status`` snapshot that ``status``
shows). It ends with a summary: wall time, audio, speed, cost, the files written.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from whisperfarm.errors import WhisperfarmError
from whisperfarm.farm import EpisodeStatus, RunSummary
from whisperfarm.fly.store import MachineStore
from whisperfarm.ledger import Ledger
from whisperfarm.money import machines_cost
from whisperfarm.settings import load_settings
from whisperfarm.states import EpisodeState, RunState
from whisperfarm.status import RunRow, StatusSnapshot, snapshot
from whisperfarm.status_view import duration_text, money
from worker.wire import WorkerKind

__all__ = ["RunReporter", "duration_text"]

FLEET_EVERY = 1.0  # seconds between ledger reads for the machines line
PLAIN_EVERY = 5.0  # seconds between plain progress lines of one episode


def wall_text(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else duration_text(seconds)


class _FarmProgress(Progress):
    """rich's Progress with the run's machines/spend line under the episode rows."""

    def __init__(
        self, *columns: str | ProgressColumn, footer: Callable[[], Text | None], **kw: Any
    ):
        self.footer = footer  # before Progress.__init__, which renders once
        super().__init__(*columns, **kw)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        line = self.footer()
        if line is not None:
            yield line


class RunReporter:
    def __init__(
        self,
        console: Console,
        *,
        quiet: bool = False,
        plain: bool | None = None,
        ledger_path: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ):
        self.console = console
        self.quiet = quiet
        self.plain = (not console.is_terminal) if plain is None else plain
        self.ledger_path = ledger_path
        self.monotonic = monotonic
        self.clock = clock
        self._progress: _FarmProgress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._baseline: dict[str, tuple[float, float]] = {}
        self._last_plain: dict[str, tuple[int, float]] = {}
        self._ledger: Ledger | None = None
        self._fleet: StatusSnapshot | None = None
        self._fleet_read_at = float("-inf")
        self._last_fleet_line = ""
        self._last_fleet_print = float("-inf")

    # The Reporter protocol ----------------------------------------------------------

    def coordinator_ready(self, url: str, token: str, fleet: str) -> None:
        if self.quiet:
            return
        self.console.print(f"coordinator {url} · {fleet}", markup=False, highlight=False)
        for line in (
            f"  status page: {url}/?token={token}  (or 'whisperfarm status' in a terminal)",
            f"  more workers: whisperfarm worker --url {url} --token {token}",
        ):
            self.console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)
        if not self.plain:
            self._progress = self._make_progress()
            self._progress.start()

    def update(self, episodes: list[EpisodeStatus]) -> None:
        if self.quiet:
            return
        now = self.monotonic()
        self._read_fleet([e.id for e in episodes], now)
        for episode in episodes:
            p = episode.progress
            speed, eta = self._speed_and_eta(episode, now)
            if self._progress is not None:
                task = self._tasks.get(episode.id)
                if task is None:
                    task = self._progress.add_task(
                        episode.name, total=None, chunks="", minutes="", speed="", eta="—"
                    )
                    self._tasks[episode.id] = task
                chunking = episode.state == EpisodeState.CHUNKING
                total = "?" if chunking else str(p.total)
                audio_total = "?" if chunking else f"{p.audio_total / 60:.1f}"
                self._progress.update(
                    task,
                    completed=p.done,
                    total=None if chunking else max(p.total, 1),
                    chunks=f"{p.done}/{total} chunks",
                    minutes=f"{p.audio_done / 60:.1f}/{audio_total} min",
                    speed=_speed_cell(episode, speed, _waiting(episode)),
                    eta=_eta(episode, eta),
                )
            else:
                self._plain_line(episode, speed, eta, now)
        if self._progress is None:
            self._plain_fleet_line(now)

    def episode_finished(self, episode: EpisodeStatus) -> None:
        if episode.state != EpisodeState.DONE and self._progress is not None:
            self._progress.console.print(
                f"{episode.name}: {episode.error}", style="red", markup=False, highlight=False
            )

    # Lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def summary(self, summary: RunSummary, out_dir: Path) -> None:
        self.close()
        if self.quiet:
            return
        done = [e for e in summary.episodes if e.state == EpisodeState.DONE]
        audio = sum(e.duration or 0 for e in done)
        all_done = len(done) == len(summary.episodes)
        line = Text("done" if all_done else "finished", style="green" if all_done else "yellow")
        line.append(f": {len(done)} of {len(summary.episodes)} episode(s) · ")
        line.append(_speed_text(done, audio, summary.wall_seconds))
        cost = self._run_cost(summary.run_id)
        if cost is not None:
            spent, machines, budget = cost
            line.append(
                f" · cost {money(spent)} on {machines} machine{'s' if machines != 1 else ''}"
            )
            if budget is not None:
                line.append(f" (budget {money(budget)})")
        self.console.print(line, highlight=False, soft_wrap=True)
        for episode in done:
            names = ", ".join(str(path) for path in episode.files)
            self.console.print(
                f"  {episode.name} → {names}", markup=False, highlight=False, soft_wrap=True
            )

    # Inside -------------------------------------------------------------------------

    def _make_progress(self) -> _FarmProgress:
        narrow = self.console.width < 100
        name = Column(no_wrap=True, overflow="ellipsis", max_width=16 if narrow else 28)
        columns: list[str | ProgressColumn] = [
            TextColumn("{task.description}", table_column=name),
            BarColumn(bar_width=10 if narrow else 24),
            TextColumn("{task.fields[chunks]}"),
        ]
        if not narrow:
            columns.append(TextColumn("{task.fields[minutes]}"))
        columns += [TextColumn("{task.fields[speed]}"), TextColumn("ETA {task.fields[eta]}")]
        return _FarmProgress(
            *columns,
            footer=self._fleet_text,
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )

    def _speed_and_eta(self, episode: EpisodeStatus, now: float) -> tuple[float, float | None]:
        """× realtime since this reporter first saw the episode (so chunks kept from an
        earlier run don't count), and the seconds left at that speed."""
        p = episode.progress
        base_audio, base_time = self._baseline.setdefault(episode.id, (p.audio_done, now))
        elapsed = now - base_time
        speed = (p.audio_done - base_audio) / elapsed if elapsed > 0 else 0.0
        remaining = p.audio_total - p.audio_done
        eta = remaining / speed if speed > 0 and episode.state != EpisodeState.CHUNKING else None
        return speed, eta

    def _plain_line(
        self, episode: EpisodeStatus, speed: float, eta: float | None, now: float
    ) -> None:
        p = episode.progress
        last_done, last_time = self._last_plain.get(episode.id, (-1, float("-inf")))
        if p.done == last_done or (now - last_time < PLAIN_EVERY and p.done != p.total):
            return
        self._last_plain[episode.id] = (p.done, now)
        total = "?" if episode.state == EpisodeState.CHUNKING else str(p.total)
        rate = _speed_cell(episode, speed, "0.0× realtime")
        self.console.print(
            f"{episode.name}: {p.done}/{total} chunks, {rate}, ETA {_eta(episode, eta)}",
            markup=False,
            highlight=False,
        )

    def _plain_fleet_line(self, now: float) -> None:
        text = self._fleet_text()
        if text is None or now - self._last_fleet_print < PLAIN_EVERY:
            return
        if text.plain != self._last_fleet_line:
            self._last_fleet_line = text.plain
            self._last_fleet_print = now
            self.console.print(text.plain, markup=False, highlight=False)

    def _path(self) -> Path:
        if self.ledger_path is None:
            self.ledger_path = load_settings().ledger_path
        return self.ledger_path

    def _open_ledger(self) -> Ledger | None:
        if self._ledger is None and self._path().exists():
            self._ledger = Ledger(self._path())
        return self._ledger

    def _read_fleet(self, episode_ids: list[str], now: float) -> None:
        if now - self._fleet_read_at < FLEET_EVERY:
            return
        self._fleet_read_at = now
        try:
            ledger = self._open_ledger()
            if ledger is not None:
                self._fleet = snapshot(ledger, self.clock(), episode_ids=episode_ids)
        except (WhisperfarmError, sqlite3.Error):
            self._fleet = None  # the machines line is a nicety: never fail a run over it

    def _our_run(self) -> RunRow | None:
        if self._fleet is None:
            return None
        running = [r for r in self._fleet.runs if r.state == RunState.RUNNING]
        runs = running or list(self._fleet.runs)
        return runs[0] if runs else None

    def _fleet_text(self) -> Text | None:
        """The lines under the episodes: the workers at work, and any Fly machines."""
        lines = [line for line in (self._workers_text(), self._machines_text()) if line]
        return Text("\n").join(lines) if lines else None

    def _workers_text(self) -> Text | None:
        """Every worker seen during the run and not gone: local ones, those that joined
        with the printed command, and those on Fly machines."""
        if self._fleet is None:
            return None
        live = [w for w in self._fleet.workers if w.state in ("working", "idle")]
        if not live:
            return None
        local = sum(1 for w in live if w.kind == WorkerKind.LOCAL)
        fly = sum(1 for w in live if w.kind == "fly")
        joined = [w.where for w in live if w.kind not in (WorkerKind.LOCAL, WorkerKind.FLY)]
        parts = [f"{local} local"] if local else []
        if joined:
            parts.append(f"{len(joined)} joined ({', '.join(joined)})")
        if fly:
            parts.append(f"{fly} on Fly machines")
        text = Text("workers: ", style="bold")
        text.append(" · ".join(parts))
        return text

    def _machines_text(self) -> Text | None:
        run = self._our_run()
        if run is None or not run.machines:
            return None
        text = Text("machines: ", style="bold")
        limit = f" (max {run.max_machines})" if run.max_machines else ""
        text.append(f"{run.machines_running} up of {run.machines} started{limit} · spent ")
        text.append(money(run.spent_usd), style="bold")
        if run.budget_usd is not None:
            text.append(f" of {money(run.budget_usd)} budget")
            if run.over_budget:
                text.append(" · OVER BUDGET", style="bold red")
        return text

    def _run_cost(self, run_id: str) -> tuple[float, int, float | None] | None:
        """(spent, machines, budget) of the run, or None when it had no machines."""
        try:
            if not self._path().exists():
                return None
            ledger = Ledger(self._path())
        except (WhisperfarmError, sqlite3.Error):
            return None
        try:
            machines = MachineStore(ledger).machines_of_runs([run_id])
            if not machines:
                return None
            now = self.clock()
            spent = machines_cost(machines, now)
            budget = next((r["budget"] for r in ledger.runs() if r["id"] == run_id), None)
            return spent, len(machines), budget
        finally:
            ledger.close()


def _speed_text(done: list[EpisodeStatus], audio: float, wall: float) -> str:
    """How long the audio took, × realtime over what this run transcribed; results
    reused from the ledger are counted as reused, not as speed."""
    reused = sum(e.reused_chunks for e in done)
    transcribed = sum(e.transcribed_audio for e in done)
    took = f"{duration_text(audio)} of audio in {wall_text(wall)}"
    if reused and not transcribed:
        return f"{took}: stored results reused ({reused} chunk(s)), nothing transcribed"
    speed = transcribed / wall if wall else 0.0
    also = f", {reused} chunk(s) reused from stored results" if reused else ""
    return f"{took} ({speed:.1f}× realtime{also})"


def _eta(episode: EpisodeStatus, eta: float | None) -> str:
    if episode.state == EpisodeState.DONE:
        return "done"
    return duration_text(eta) if eta is not None and eta > 0 else "—"


def _speed_cell(episode: EpisodeStatus, speed: float, waiting: str) -> str:
    """× realtime since the episode was first seen; an episode done without a chunk
    transcribed since then took its results from the ledger."""
    if speed:
        return f"{speed:.1f}× realtime"
    return "results reused" if episode.state == "done" else waiting


def _waiting(episode: EpisodeStatus) -> str:
    return "chunking…" if episode.state == EpisodeState.CHUNKING else "starting…"
