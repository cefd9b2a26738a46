"""Running a farm: ``transcribe`` (local workers) and ``worker`` (join one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from whisperfarm.cli import app, err, friendly, out


@app.command()
@friendly
def transcribe(
    inputs: Annotated[
        list[Path], typer.Argument(help="Audio or video files (anything ffmpeg reads).")
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Local worker processes (default: one per core; 0: remote workers only).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per local worker (default: cores ÷ workers).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="faster-whisper model name or model directory [default: small.en].",
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the transcripts.")
    ] = Path("."),
    formats: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="Comma list of txt, srt, vtt, json, tsv, or 'all' [default: txt,srt,vtt,json].",
        ),
    ] = None,
    words: Annotated[
        bool | None, typer.Option("--words/--no-words", help="Word timestamps in the json output.")
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(help="Spoken language code (default: en for .en models, else detected)."),
    ] = None,
    compute_type: Annotated[
        str | None, typer.Option(help="CTranslate2 compute type [default: int8].")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Coordinator listen address [default: 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Coordinator port [default: any free port].")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Transcribe files on local workers; writes OUT/<name>.<format> for each input.

    Running the same command again after a crash or Ctrl-C resumes: finished chunks are
    kept (matched by the file's content and the model).

    Example: [bold]whisperfarm transcribe show.mp3 -m tiny.en --format all -o out/[/bold]
    """
    from whisperfarm.console import RunReporter
    from whisperfarm.farm import Farm
    from whisperfarm.local import LocalFleet, default_workers
    from whisperfarm.settings import load_settings, parse_formats

    settings = load_settings(
        workers=workers,
        threads=threads,
        model=model,
        formats=formats,
        word_timestamps=words,
        language=language,
        compute_type=compute_type,
        host=host,
        port=port,
    )
    format_list = parse_formats(settings.formats)
    n_workers, n_threads = default_workers()
    if settings.workers is not None:
        n_workers = settings.workers
        n_threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    if settings.threads is not None:
        n_threads = settings.threads
    _warn_if_exposed(settings.host)
    import secrets

    fleet = LocalFleet(
        n_workers,
        n_threads,
        logs_dir=settings.logs_dir,
        run_id=secrets.token_hex(3),
        compute_type=settings.compute_type,
    )
    reporter = RunReporter(out, quiet=quiet)
    try:
        summary = Farm(settings, fleet, reporter).transcribe(inputs, out_dir, format_list)
    finally:
        reporter.close()
    reporter.summary(summary, out_dir)
    if summary.failed:
        for episode in summary.failed:
            err.print(
                f"[red]error:[/red] {episode.name}: {episode.error}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)


@app.command()
@friendly
def worker(
    url: Annotated[
        str, typer.Option(help="Coordinator URL, as 'transcribe' or 'serve' printed it.")
    ],
    token: Annotated[
        str, typer.Option(help="The run's token, as printed.", envvar="WHISPERFARM_TOKEN")
    ],
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model [default: all cores].")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Load this model (name or directory) whatever the jobs ask.")
    ] = None,
) -> None:
    """Join a running farm from this machine and work until the queue is empty.

    Example: [bold]whisperfarm worker --url http://10.0.0.5:8765 --token abc123[/bold]
    """
    os.environ["WHISPERFARM_URL"] = url
    os.environ["WHISPERFARM_TOKEN"] = token
    if threads:
        os.environ["WHISPERFARM_THREADS"] = str(threads)
    if model:
        os.environ["WHISPERFARM_MODEL"] = model
    from worker.__main__ import main as worker_main

    raise typer.Exit(worker_main())


def _warn_if_exposed(host: str) -> None:
    from whisperfarm.server import is_loopback

    if not is_loopback(host):
        err.print(
            f"[yellow]warning:[/yellow] the coordinator listens on {host}, beyond this machine; "
            "anyone who can reach it needs the run's token, so keep it private",
            highlight=False,
        )
