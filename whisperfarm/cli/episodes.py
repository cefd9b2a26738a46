"""Managing what the ledger holds: ``episodes``, ``export``, ``retry``, ``remove``,
``clean``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import RenderableType
from rich.table import Table

from whisperfarm.cli.root import (
    Formats,
    HighlightWords,
    MaxLineCount,
    MaxLineWidth,
    OutDir,
    app,
    friendly,
    out,
)
from whisperfarm.errors import EpisodeNotFound
from whisperfarm.ledger import Ledger

EPISODE = typer.Argument(
    help="The episode: its id, its name (that of the file it was last transcribed from, as "
    "'whisperfarm episodes' lists it), or the start of its id; a name wins over the start "
    "of another episode's id."
)


@app.command(rich_help_panel="Episodes")
@friendly
def episodes(
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print them as JSON.")
    ] = False,
) -> None:
    """List the episodes the ledger holds, oldest first.

    Example: `whisperfarm episodes`
    """
    from whisperfarm.episodes import list_episodes
    from whisperfarm.status_view import duration_text, styled

    with _existing_ledger() as ledger:
        infos = list_episodes(ledger) if ledger is not None else []
    if as_json:
        typer.echo(json.dumps([info.to_dict() for info in infos], indent=2, ensure_ascii=False))
        return
    if not infos:
        out.print("No episodes yet: 'whisperfarm transcribe FILE' adds one.", style="dim")
        return
    wide = out.width >= 90
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Id", no_wrap=True)
    table.add_column("Name", overflow="ellipsis", no_wrap=True, max_width=30)
    table.add_column("State", no_wrap=True)
    table.add_column("Length", justify="right")
    table.add_column("Chunks", justify="right", no_wrap=True)
    if wide:
        table.add_column("Model", overflow="ellipsis", no_wrap=True, max_width=16)
        table.add_column("Added", no_wrap=True)
    for info in infos:
        chunks = f"{info.chunks_done}/{info.chunks_total}"
        if info.chunks_dead:
            chunks += f" ✗{info.chunks_dead}"
        cells: list[RenderableType] = [
            info.id,
            info.name,
            styled(info.state),
            duration_text(info.duration),
            chunks,
        ]
        if wide:
            added = datetime.fromtimestamp(info.created_at).strftime("%Y-%m-%d %H:%M")
            cells += [info.model, added]
        table.add_row(*cells)
    out.print(table)


@app.command(rich_help_panel="Episodes")
@friendly
def export(
    episode: Annotated[str, EPISODE],
    formats: Formats = None,
    out_dir: OutDir = Path("."),
    words: Annotated[
        bool | None,
        typer.Option(
            "--words/--no-words",
            metavar="",
            help="Word timestamps in the json output, and srt/vtt cues timed by them "
            "[default: as transcribed].",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="File name stem [default: the episode's name].")
    ] = None,
    max_line_width: MaxLineWidth = None,
    max_line_count: MaxLineCount = None,
    highlight_words: HighlightWords = None,
) -> None:
    """Rewrite an episode's transcripts from stored results, without transcribing.

    Example: `whisperfarm export interview --format srt,tsv --out subs/`
    """
    from whisperfarm.episodes import export as export_episode
    from whisperfarm.settings import load_settings, parse_formats
    from whisperfarm.transcripts import check_out_dir

    settings = load_settings(
        formats=formats,
        max_line_width=max_line_width,
        max_line_count=max_line_count,
        highlight_words=highlight_words,
    )
    format_list = parse_formats(settings.formats)
    check_out_dir(out_dir)
    with _ledger() as ledger:
        done, files = export_episode(
            ledger,
            episode,
            out_dir,
            format_list,
            keep_words=words,
            stem=name,
            subtitles=settings.cue_style(),
        )
    out.print(f"{done['name']} → {', '.join(str(path) for path in files)}", highlight=False)


@app.command(rich_help_panel="Episodes")
@friendly
def retry(episode: Annotated[str, EPISODE]) -> None:
    """Re-queue an episode's failed chunks (and any whose stored result is missing).

    A running farm picks them up; otherwise transcribing the file again does.

    Example: `whisperfarm retry interview`
    """
    from whisperfarm.episodes import retry as retry_episode

    with _ledger() as ledger:
        result = retry_episode(ledger, episode)
    name, source = result.episode["name"], result.episode["source"]
    if not result.requeued:
        out.print(f"nothing to retry: {name} has no failed chunks", highlight=False)
        return
    missing = f" ({result.missing} with a missing result)" if result.missing else ""
    out.print(
        f"re-queued {result.requeued} chunk(s) of {name}{missing}; a running farm picks them "
        f"up, or run: whisperfarm transcribe {source}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(rich_help_panel="Episodes")
@friendly
def remove(
    episode: Annotated[list[str], EPISODE],
    yes: Annotated[bool, typer.Option("--yes", "-y", metavar="", help="Don't ask first.")] = False,
) -> None:
    """Remove episodes from the ledger with their audio chunks and results.

    Transcripts written with --out are yours and stay where they are.

    Example: `whisperfarm remove interview --yes`
    """
    from whisperfarm.episodes import remove as remove_episode
    from whisperfarm.episodes import resolve
    from whisperfarm.settings import load_settings

    episodes_dir = load_settings().episodes_dir
    with _ledger() as ledger:
        chosen = {e["id"]: e for e in (resolve(ledger, ref) for ref in episode)}
        names = ", ".join(f"{e['name']} ({e['id']})" for e in chosen.values())
        their = "its" if len(chosen) == 1 else "their"
        if not yes and not typer.confirm(
            f"Remove {names} with {their} audio chunks and results?", default=False
        ):
            raise typer.Exit(1)
        for episode_id in chosen:
            removed = remove_episode(ledger, episode_id, episodes_dir)
            out.print(f"removed {removed['name']} ({removed['id']})", highlight=False)


@app.command(rich_help_panel="Episodes")
@friendly
def clean(
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", metavar="", help="Say what would go and how much; delete nothing."
        ),
    ] = False,
    downloads: Annotated[
        bool,
        typer.Option(
            "--downloads",
            metavar="",
            help="Also empty the download cache (URLs, feeds, standard input).",
        ),
    ] = False,
) -> None:
    """Reclaim disk space: chunk audio that finished episodes no longer need.

    A run deletes an episode's chunk audio once the episode is done; this removes what is
    left over (finished episodes' audio from older runs, folders no episode owns). Results
    and transcripts stay, so exports and reruns with the same options still work.
    Unfinished episodes keep their audio.

    Example: `whisperfarm clean --dry-run`
    """
    from whisperfarm.reclaim import reclaim, reclaimable
    from whisperfarm.settings import load_settings
    from whisperfarm.status_view import size_text

    settings = load_settings()
    with _existing_ledger() as ledger:
        if ledger is None:
            out.print("nothing to clean: no ledger yet")
            return
        items = reclaimable(
            ledger, settings.episodes_dir, settings.downloads_dir, downloads=downloads
        )
    total = sum(item.size for item in items)
    if not items:
        out.print("nothing to clean")
        return
    for item in items:
        out.print(
            f"  {size_text(item.size):>9}  {item.path}  ({item.why})",
            highlight=False,
            soft_wrap=True,
        )
    if dry_run:
        out.print(f"would free {size_text(total)} in {len(items)} place(s) (--dry-run)")
        return
    freed = reclaim(items)
    out.print(f"freed {size_text(freed)} in {len(items)} place(s)")


@contextmanager
def _existing_ledger() -> Iterator[Ledger | None]:
    """The ledger, or None where there is none yet: never creates one just to find it empty."""
    from whisperfarm.settings import load_settings

    path = load_settings().ledger_path
    if not path.exists():
        yield None
        return
    with Ledger(path) as ledger:
        yield ledger


@contextmanager
def _ledger() -> Iterator[Ledger]:
    with _existing_ledger() as ledger:
        if ledger is None:
            raise EpisodeNotFound(
                "the ledger holds no episodes yet: 'whisperfarm transcribe FILE' adds one"
            )
        yield ledger
