"""The root command: the Typer ``app`` every command registers on, its ``--version``, the
consoles, the error boundary (``friendly``, ``fail``) and the options several commands
share, spelled once. The command modules import it; ``whisperfarm.cli`` imports them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from whisperfarm import __version__
from whisperfarm.errors import WhisperfarmError
from whisperfarm.interrupts import StopSignal

app = typer.Typer(
    name="whisperfarm",
    help="Transcribe long audio fast: split it at pauses, farm the chunks out to "
    "work-stealing workers, stitch one transcript.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
# Off a terminal (a pipe, a log) a printed line stays one line, not wrapped at rich's 80
# columns: plain lines for scripts, and the join command whole. On a terminal the live
# display lays itself out to the width, so wrapping stays as it is; tables fit either way.
out.soft_wrap = not out.is_terminal
err.soft_wrap = not err.is_terminal

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Expected failures become one line naming the fix; anything else stays a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WhisperfarmError as error:
            fail(str(error), error.exit_code)
        except StopSignal as stop:  # outside a run (a run says what it cleaned up)
            fail(f"stopped by {stop.label}", stop.exit_code)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> None:
    with contextlib.suppress(OSError):  # stderr gone with a closed terminal (SIGHUP)
        err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def report_errors(messages: list[str]) -> None:
    """One red line for each of the things that went wrong in a run that went on."""
    for message in messages:
        err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)


def warn_if_exposed(host: str) -> None:
    """A warning when the coordinator is to listen beyond this machine."""
    from whisperfarm.server import is_loopback

    if not is_loopback(host):
        err.print(
            f"[yellow]warning:[/yellow] the coordinator listens on {host}, beyond this machine; "
            "anyone who can reach it needs the run's token, so keep it private",
            highlight=False,
        )


# Options several commands share, spelled once.
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Directory for the transcripts.")]
Formats = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Comma list of txt, srt, vtt, json, tsv, or 'all' [default: txt,srt,vtt,json].",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="Print nothing but errors.")]
# srt and vtt cues (whisperfarm/subtitles.py); named as the whisper CLIs name them.
MaxLineWidth = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="CHARS",
        help="srt/vtt: characters a subtitle line holds, at most; a longer word gets a "
        "line of its own [default: 42].",
    ),
]
MaxLineCount = Annotated[
    int | None,
    typer.Option(
        min=1, metavar="LINES", help="srt/vtt: lines a subtitle cue holds, at most [default: 2]."
    ),
]
HighlightWords = Annotated[
    bool | None,
    typer.Option(
        "--highlight-words/--no-highlight-words",
        metavar="",  # a flag: no <bool> in --help
        help="srt/vtt: karaoke, a cue per word that underlines the word being said; needs "
        "word timestamps (transcribe turns --words on) [default: off].",
    ),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"whisperfarm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", callback=_version, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Transcribe long audio fast on a farm of work-stealing workers."""
