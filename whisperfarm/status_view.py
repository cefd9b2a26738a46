"""Rich renderables for a ``StatusSnapshot``: the ``whisperfarm status`` screen.

``render_status(snapshot, width)`` picks its columns by width: every column from 100
characters, a shorter bar from 72, and below that only what matters (progress, ETA, state,
heartbeats) so a phone-sized terminal still reads. Bars are drawn with █ and ░, so they
read without colour too. ``watch`` redraws it a few times a second until Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from whisperfarm.states import ChunkState, EpisodeState, MachineState, RunState
from whisperfarm.status import ChunkRow, EpisodeRow, MachineRow, RunRow, StatusSnapshot, WorkerRow

WIDE = 100
MEDIUM = 72

# Each name once: a chunk, an episode and a run share "done", and "failed" is a machine's too.
STATE_STYLES: dict[str, str] = {
    # what status makes of an episode's state (status._episode_state)
    "transcribing": "cyan",
    "finishing": "cyan",
    "waiting": "yellow",
    "paused": "yellow",
    EpisodeState.CHUNKING: "magenta",
    EpisodeState.DONE: "green",
    EpisodeState.FAILED: "red",
    RunState.RUNNING: "cyan",
    RunState.INTERRUPTED: "yellow",
    RunState.CRASHED: "red",
    RunState.BUDGET: "red",
    # a worker, as status sees it (status._worker_row)
    "working": "cyan",
    "idle": "dim",
    "stale": "bold red",
    "gone": "dim",
    MachineState.STARTED: "green",
    MachineState.CREATED: "yellow",
    MachineState.STARTING: "yellow",
    MachineState.STOPPING: "yellow",
    MachineState.STOPPED: "dim",
    MachineState.DESTROYED: "dim",
}


# Text -------------------------------------------------------------------------------


def duration_text(seconds: float | None) -> str:
    """1:02:03, or 2:05 under an hour; ? when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def age_text(seconds: float) -> str:
    """4s, 2m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size_text(size: int) -> str:
    """Bytes as people read them: 512 B, 3.4 kB, 1.9 MB, 2.1 GB (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def money(usd: float | None) -> str:
    """$0.042 under a dollar (Fly bills fractions of a cent per minute), else $12.34."""
    if usd is None:
        return "—"
    return f"${usd:.3f}" if abs(usd) < 1 else f"${usd:,.2f}"


def speed_text(speed: float | None) -> str:
    return "—" if not speed else f"{speed:.1f}×"


def eta_text(episode: EpisodeRow) -> str:
    if episode.state == EpisodeState.DONE:
        return "done"
    return "—" if episode.eta_seconds is None else duration_text(episode.eta_seconds)


def minutes_text(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def bar(fraction: float, width: int, style: str = "green") -> Text:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    text = Text()
    text.append("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    return text


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


# Sections ---------------------------------------------------------------------------


def render_status(snapshot: StatusSnapshot, width: int) -> RenderableType:
    """The whole status screen for a console ``width`` characters wide."""
    if snapshot.empty:
        return Text(nothing_to_show(snapshot), style="dim")
    parts: list[RenderableType] = [run_line(run, width) for run in snapshot.runs]
    if snapshot.episodes:
        parts += [Text(), episodes_table(snapshot, width)]
    else:
        parts += [Text("no episodes in this run", style="dim")]
    focus = next((e for e in snapshot.episodes if e.chunks is not None), None)
    if focus is not None:
        parts += [Text(), chunks_section(focus, width)]
    if snapshot.workers:
        parts += [Text(), workers_table(snapshot.workers, width)]
    elif snapshot.running:
        parts += [Text(), Text("no worker has connected yet", style="yellow")]
    if snapshot.machines:
        parts += [Text(), machines_table(snapshot.machines, width)]
    return Group(*parts)


def nothing_to_show(snapshot: StatusSnapshot) -> str:
    if snapshot.focus:
        return f"Nothing to show for {snapshot.focus}."
    if snapshot.ledger_episodes:
        return (
            f"Nothing is running; the ledger holds {snapshot.ledger_episodes} episode(s): "
            "'whisperfarm episodes' lists them."
        )
    return "Nothing to show: no runs yet. Start one with 'whisperfarm transcribe FILE'."


def run_line(run: RunRow, width: int) -> Text:
    text = Text()
    text.append(f"run {run.id}", style="bold")
    text.append("  ")
    text.append_text(styled(run.state))
    if run.state == RunState.RUNNING:
        text.append(f" {duration_text(run.elapsed_seconds)}")
    else:
        text.append(f" after {duration_text(run.elapsed_seconds)}", style="dim")
    text.append(f" · {run.backend}", style="dim")
    if run.machines or run.max_machines:
        limit = f" of {run.max_machines}" if run.max_machines else ""
        text.append(f" · {run.machines_running}{limit} machines up")
    if run.machines or run.budget_usd is not None:
        text.append(" · ")
        text.append(money(run.spent_usd), style="bold")
        if run.budget_usd is not None:
            text.append(f" of {money(run.budget_usd)} budget")
        if run.over_budget:
            text.append(" · OVER BUDGET", style="bold red")
    return text


def episodes_table(snapshot: StatusSnapshot, width: int) -> Table:
    wide, medium = width >= WIDE, width >= MEDIUM
    spend = snapshot.has_spend and medium  # narrow: the run line has the total
    table = _table("Episodes", width)
    table.add_column("Episode", overflow="ellipsis", no_wrap=True, max_width=28 if wide else 18)
    if wide:
        table.add_column("Length", justify="right")
    if medium:
        table.add_column("Progress", no_wrap=True)
    table.add_column("Chunks", justify="right", no_wrap=True)
    if wide:
        table.add_column("Minutes", justify="right", no_wrap=True)
    if medium:
        table.add_column("Speed", justify="right")
    table.add_column("ETA", justify="right", no_wrap=True, min_width=4)
    table.add_column("State", no_wrap=True)
    if spend:
        table.add_column("Spend", justify="right")
    for episode in snapshot.episodes:
        cells: list[RenderableType] = [episode.name]
        if wide:
            cells.append(duration_text(episode.duration))
        if medium:
            style = "red" if episode.state == EpisodeState.FAILED else "green"
            progress = bar(episode.fraction, 16 if wide else 10, style)
            progress.append(f" {episode.fraction * 100:3.0f}%")
            cells.append(progress)
        cells.append(_chunk_count(episode, medium))
        if wide:
            total = "?" if episode.chunking else minutes_text(episode.audio_total)
            cells.append(f"{minutes_text(episode.audio_done)}/{total}")
        if medium:
            cells.append(speed_text(episode.speed))
        cells.append(eta_text(episode))
        cells.append(styled(episode.state))
        if spend:
            cells.append(money(episode.spend_usd))
        table.add_row(*cells)
    failed = [e for e in snapshot.episodes if e.state == EpisodeState.FAILED and e.error]
    if failed:
        table.caption = "\n".join(f"{e.name}: {e.error}" for e in failed)
        table.caption_style = "red"
        table.caption_justify = "left"
    return table


def _chunk_count(episode: EpisodeRow, medium: bool) -> Text:
    total = "?" if episode.chunking else str(episode.chunks_total)
    text = Text(f"{episode.chunks_done}/{total}")
    if not medium and episode.state not in (EpisodeState.DONE, EpisodeState.FAILED):
        text.append(f" {episode.fraction * 100:.0f}%", style="dim")
    if episode.chunks_dead:
        text.append(f" ✗{episode.chunks_dead}", style="red")
    return text


CHUNK_MARKS: dict[str, tuple[str, str]] = {
    ChunkState.DONE: ("█", "green"),
    ChunkState.LEASED: ("▓", "cyan"),
    ChunkState.QUEUED: ("░", "dim"),
}


def chunks_section(episode: EpisodeRow, width: int) -> RenderableType:
    chunks = episode.chunks or ()
    counts = Text(f"{episode.name}: ", style="bold")
    counts.append(
        f"{episode.chunks_done} done · {episode.chunks_leased} leased · "
        f"{episode.chunks_queued} queued · "
    )
    counts.append(f"{episode.chunks_dead} failed", style="red" if episode.chunks_dead else "")
    chunk_map = Text()
    for chunk in chunks:
        mark, style = CHUNK_MARKS.get(chunk.state, ("✗", "red"))
        chunk_map.append(mark, style=style)
    legend = Text("█ done  ▓ leased  ░ queued  ✗ failed", style="dim")
    parts: list[RenderableType] = [counts, chunk_map, legend]
    if episode.options:
        parts.insert(1, Text(f"{episode.model} · {episode.options}", style="dim"))
    busy = [c for c in chunks if c.state in (ChunkState.LEASED, ChunkState.DEAD)]
    if busy:
        errors = width >= MEDIUM and any(c.error for c in busy)
        table = _table(None, width)
        table.add_column("#", justify="right")
        table.add_column("Audio", no_wrap=True)
        table.add_column("State", no_wrap=True)
        table.add_column("Try", justify="right")
        table.add_column("Worker", overflow="ellipsis", no_wrap=True, max_width=22)
        if errors:
            table.add_column("Error", overflow="fold")
        for chunk in busy:
            cells: list[RenderableType] = [
                str(chunk.idx),
                f"{duration_text(chunk.start)}–{duration_text(chunk.end)}",
                _chunk_state(chunk),
                str(chunk.attempt),
                chunk.worker_id or "—",
            ]
            if errors:
                cells.append(Text(chunk.error or "", style="red"))
            table.add_row(*cells)
        parts.append(table)
    return Group(*parts)


def _chunk_state(chunk: ChunkRow) -> Text:
    if chunk.state == ChunkState.DEAD:
        return styled("failed")  # what a dead chunk is shown as
    if chunk.lease_expires_in is not None and chunk.lease_expires_in < 0:
        return Text(f"lease expired {age_text(-chunk.lease_expires_in)} ago", style="yellow")
    return styled(chunk.state)


def workers_table(workers: tuple[WorkerRow, ...], width: int) -> Table:
    """Wide: one column each. Narrow: where it runs and its chunk under the worker's id,
    so the heartbeat (the column that flags a stale worker) is never cut."""
    medium = width >= MEDIUM
    table = _table("Workers", width)
    table.add_column("Worker", overflow="ellipsis", no_wrap=True, max_width=24 if medium else None)
    if medium:
        table.add_column("Where", overflow="ellipsis", no_wrap=True, max_width=26)
        table.add_column("Chunk", overflow="ellipsis", no_wrap=True, max_width=22)
        table.add_column("Done", justify="right")
    table.add_column("Heartbeat", justify="right", no_wrap=True)
    for worker in workers:
        if medium:
            cells: list[RenderableType] = [
                worker.id,
                worker.where,
                worker.current or "—",
                str(worker.chunks_done),
            ]
        else:
            detail = _short_where(worker) + (f" · {worker.current}" if worker.current else "")
            cells = [Text(worker.id).append(f"\n{detail}", style="dim")]
        cells.append(_heartbeat(worker))
        table.add_row(*cells)
    return table


def _short_where(worker: WorkerRow) -> str:
    """Where a worker runs, without repeating a machine id that is already its name."""
    if worker.machine_id and worker.machine_id == worker.id:
        return f"fly ({worker.region})" if worker.region else "fly"
    return worker.where


def _heartbeat(worker: WorkerRow) -> Text:
    age = age_text(worker.heartbeat_age)
    if worker.state == "stale":
        return Text(f"⚠ {age} stale", style=STATE_STYLES["stale"])
    if worker.state == "gone":
        return Text(f"{age} gone", style="dim")
    return Text(f"{age} ago")


def machines_table(machines: tuple[MachineRow, ...], width: int) -> Table:
    medium = width >= MEDIUM
    table = _table("Machines", width)
    table.add_column("Machine", overflow="ellipsis", no_wrap=True, max_width=20 if medium else 16)
    table.add_column("State", no_wrap=True)
    if medium:
        table.add_column("Size", overflow="ellipsis", no_wrap=True)
        table.add_column("Region")
    table.add_column("Up", justify="right", no_wrap=True)
    table.add_column("Cost", justify="right", no_wrap=True)
    for machine in machines:
        if medium:
            cells: list[RenderableType] = [
                machine.id,
                styled(machine.state),
                machine.size,
                machine.region or "—",
            ]
        else:
            where = f" {machine.region}" if machine.region else ""
            size = machine.size.replace("performance-", "perf-")
            cells = [
                Text(machine.id).append(f"\n{size}{where}", style="dim"),
                styled(machine.state),
            ]
        up = "—" if machine.started_at is None else duration_text(machine.uptime_seconds)
        cells += [up, money(machine.cost_usd)]
        table.add_row(*cells)
    return table


def _table(title: str | None, width: int) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
    )


# Live -------------------------------------------------------------------------------


def watch(
    console: Console,
    read: Callable[[], StatusSnapshot],
    *,
    interval: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw the status screen every ``interval`` seconds until Ctrl-C."""
    footer = Text(f"refreshing every {interval:g}s · Ctrl-C to exit", style="dim")
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        try:
            while True:
                screen = render_status(read(), console.width)
                live.update(Group(screen, Text(), footer), refresh=True)
                sleep(interval)
        except KeyboardInterrupt:
            pass
