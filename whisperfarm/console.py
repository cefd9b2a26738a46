"""What a run shows on the terminal: a live progress display on a terminal, plain lines
when stdout is a pipe or a file, nothing but errors with --quiet."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from whisperfarm.farm import EpisodeStatus, RunSummary


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunReporter:
    def __init__(self, console: Console, *, quiet: bool = False, plain: bool | None = None):
        self.console = console
        self.quiet = quiet
        self.plain = (not console.is_terminal) if plain is None else plain
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_plain: dict[str, tuple[int, float]] = {}

    def coordinator_ready(self, url: str, token: str, fleet: str) -> None:
        if self.quiet:
            return
        self.console.print(f"coordinator {url} · {fleet}")
        self.console.print(
            f"  more workers: whisperfarm worker --url {url} --token {token}",
            style="dim",
            highlight=False,
            soft_wrap=True,
        )
        if not self.plain:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("chunks · {task.fields[speed]} · ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()

    def update(self, episodes: list[EpisodeStatus]) -> None:
        if self.quiet:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        for episode in episodes:
            p = episode.progress
            speed = p.audio_done / elapsed
            remaining = p.audio_total - p.audio_done
            eta = duration_text(remaining / speed) if speed > 0 and remaining > 0 else "—"
            label = "chunking…" if episode.state == "chunking" else ""
            if self._progress is not None:
                task = self._tasks.get(episode.id)
                if task is None:
                    task = self._progress.add_task(episode.name, total=None, speed="—", eta="—")
                    self._tasks[episode.id] = task
                total = p.total if episode.state != "chunking" else None
                self._progress.update(
                    task,
                    completed=p.done,
                    total=total,
                    speed=f"{speed:.1f}× realtime" if speed else label or "starting",
                    eta=eta,
                )
            else:
                self._plain_line(episode, speed)

    def _plain_line(self, episode: EpisodeStatus, speed: float) -> None:
        p = episode.progress
        last_done, last_time = self._last_plain.get(episode.id, (-1, 0.0))
        now = time.monotonic()
        if p.done == last_done or (now - last_time < 5 and p.done != p.total):
            return
        self._last_plain[episode.id] = (p.done, now)
        total = "?" if episode.state == "chunking" else str(p.total)
        self.console.print(
            f"{episode.name}: {p.done}/{total} chunks, {speed:.1f}× realtime", highlight=False
        )

    def episode_finished(self, episode: EpisodeStatus) -> None:
        if episode.state != "done" and self._progress is not None:
            self._progress.console.print(f"[red]{episode.name}: {episode.error}[/red]")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self, summary: RunSummary, out_dir: Path) -> None:
        self.close()
        if self.quiet:
            return
        done = [e for e in summary.episodes if e.state == "done"]
        audio = sum(e.duration or 0 for e in done)
        speed = audio / summary.wall_seconds if summary.wall_seconds else 0
        self.console.print(
            f"[green]done[/green]: {len(done)} of {len(summary.episodes)} episode(s), "
            f"{duration_text(audio)} of audio in {summary.wall_seconds:.1f}s "
            f"({speed:.1f}× realtime)",
            highlight=False,
        )
        for episode in done:
            names = ", ".join(str(path) for path in episode.files)
            self.console.print(f"  {episode.name} → {names}", highlight=False, soft_wrap=True)
