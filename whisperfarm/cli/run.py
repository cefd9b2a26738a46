"""Running a farm: ``transcribe`` (local workers) and ``worker`` (join one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from whisperfarm.cli.root import (
    Formats,
    HighlightWords,
    MaxLineCount,
    MaxLineWidth,
    OutDir,
    Quiet,
    app,
    err,
    friendly,
    out,
    report_errors,
    warn_if_exposed,
)
from whisperfarm.decoding import TaskName
from worker.device import DEFAULT_BATCH_SIZE, Device
from worker.wire import MAX_JOBS_PER_CLAIM

BATCH_DEFAULTS = (
    f"{DEFAULT_BATCH_SIZE[Device.CPU]} on a CPU, {DEFAULT_BATCH_SIZE[Device.CUDA]} on a GPU"
)

if TYPE_CHECKING:
    from whisperfarm.settings import Settings


@app.command()
@friendly
def transcribe(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Audio or video files (anything ffmpeg reads), http(s) URLs of one or of a "
            "podcast's RSS/Atom feed, or - for standard input.",
            metavar="FILE|URL|-",
            show_default=False,
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Local worker processes (default: one per core up to 4, then one per 2 cores; "
            "0: remote workers only).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per local worker (default: cores ÷ workers).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Chunks each local worker claims and decodes at once, "
            f"1-{MAX_JOBS_PER_CLAIM} [default: {BATCH_DEFAULTS}]."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="faster-whisper model name or model directory [default: small.en].",
        ),
    ] = None,
    out_dir: OutDir = Path("."),
    formats: Formats = None,
    max_line_width: MaxLineWidth = None,
    max_line_count: MaxLineCount = None,
    highlight_words: HighlightWords = None,
    words: Annotated[
        bool | None,
        typer.Option(
            "--words/--no-words",
            metavar="",
            help="Word timestamps in the json output, and srt/vtt cues timed by them; they "
            "also let the silence-hallucination rule judge every chunk, which can change the "
            "text of every format.",
        ),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            metavar="CODE",
            help="Spoken language: a Whisper code (de) or its English name (German); .en "
            "models take English only [default: en for .en models, else detected].",
        ),
    ] = None,
    task: Annotated[
        TaskName | None,
        typer.Option(
            help="transcribe, or translate into English (needs a multilingual model) "
            "[default: transcribe].",
        ),
    ] = None,
    initial_prompt: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT",
            help="Text given to the model before each chunk: names, spellings, a style "
            "[default: none].",
        ),
    ] = None,
    hotwords: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", help="Words the model should favour, e.g. names [default: none]."
        ),
    ] = None,
    beam_size: Annotated[
        int | None,
        typer.Option(min=1, max=10, metavar="N", help="Beam search width [default: 5]."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="T",
            help="First sampling temperature; a window that fails Whisper's checks is decoded "
            "again 0.2 hotter, up to 1.0 [default: 0].",
        ),
    ] = None,
    vad_filter: Annotated[
        bool | None,
        typer.Option(
            "--vad-filter/--no-vad-filter",
            metavar="",
            help="faster-whisper's own VAD in the worker: drop each chunk's stretches without "
            "speech before decoding. Not the cutter's speech model (the 'vad' setting), which "
            "decides where chunks are cut and skips chunks without speech [default: off].",
        ),
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
    quiet: Quiet = False,
    backend: Annotated[
        str | None,
        typer.Option(help="Where workers run: local, or fly (Fly Machines) [default: local]."),
    ] = None,
    max_machines: Annotated[
        int | None, typer.Option(help="Fly: never more machines than this at once [default: 10].")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="Fly: dollars the run may spend, at most.")
    ] = None,
    machine_size: Annotated[
        str | None,
        typer.Option(help="Fly: performance-1x … performance-16x [default: suits the model]."),
    ] = None,
    region: Annotated[str | None, typer.Option(help="Fly: region for the machines.")] = None,
    image: Annotated[
        str | None, typer.Option(help="Fly: worker image [default: registry.fly.io/APP:latest].")
    ] = None,
    fly_app: Annotated[
        str | None, typer.Option("--app", help="Fly: the worker app [default: $FLY_APP].")
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            help="Fly: the coordinator URL machines use, e.g. http://laptop._peer.internal:8765."
        ),
    ] = None,
    reach_timeout: Annotated[
        float | None,
        typer.Option(
            help="Fly: seconds a machine's worker has to reach the coordinator once the "
            "machine runs; the first machine must, before more start [default: 90]."
        ),
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option("--gpu", metavar="", help="Fly: GPU machines (no longer offered by Fly)."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", metavar="", help="Print the plan, time and cost estimate; start nothing."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", metavar="", help="Start machines without asking.")
    ] = False,
    latest: Annotated[
        int,
        typer.Option(
            "--latest",
            min=1,
            help="Feeds: the N newest episodes; those already transcribed with this model "
            "are skipped.",
        ),
    ] = 1,
) -> None:
    """Transcribe files; writes OUT/NAME.FORMAT for each input.

    A URL is downloaded (resumably) into WHISPERFARM_HOME/downloads and named from its
    headers or path; a podcast feed URL gives its --latest N episodes, named from their
    titles; '-' reads standard input (named 'stdin').

    Workers run locally, on Fly Machines (--backend fly, within --budget), or anywhere
    that runs the printed 'whisperfarm worker' command. Running the same command again
    after a crash or Ctrl-C resumes: finished chunks are kept (matched by the file's
    content and the model).

    On Fly, one machine starts first; more start once its worker has reached the
    coordinator at --advertise-url (within --reach-timeout), else the run stops
    ('whisperfarm machines check' tests this). Ctrl-C, SIGTERM and SIGHUP destroy the
    run's machines and stop its workers before it exits (130, 143, 129).

    Example: `whisperfarm transcribe show.mp3 -m tiny.en --format all -o out/`
    """
    from whisperfarm.console import RunReporter
    from whisperfarm.errors import FlyGPUUnsupported
    from whisperfarm.fly.pricing import GPU_GONE_MESSAGE
    from whisperfarm.fly.store import MachineStore
    from whisperfarm.interrupts import stop_signals
    from whisperfarm.ledger import Ledger
    from whisperfarm.plan import fleets, plan_run
    from whisperfarm.settings import load_settings, parse_formats
    from whisperfarm.transcripts import check_out_dir

    if gpu:
        raise FlyGPUUnsupported(GPU_GONE_MESSAGE)
    settings = load_settings(
        workers=workers,
        threads=threads,
        batch_size=batch_size,
        model=model,
        formats=formats,
        max_line_width=max_line_width,
        max_line_count=max_line_count,
        highlight_words=highlight_words,
        word_timestamps=words,
        language=language,
        task=task.value if task is not None else None,
        initial_prompt=initial_prompt,
        hotwords=hotwords,
        beam_size=beam_size,
        temperature=temperature,
        vad_filter=vad_filter,
        compute_type=compute_type,
        host=host,
        port=port,
        backend=backend,
        max_machines=max_machines,
        budget=budget,
        machine_size=machine_size,
        region=region,
        image=image,
        fly_app=fly_app,
        advertise_url=advertise_url,
        fly_reach_timeout=reach_timeout,
    ).checked_for_transcription()
    format_list = parse_formats(settings.formats)
    check_out_dir(out_dir)
    resolved, bad_urls = _resolve_inputs(inputs, settings, latest=latest, quiet=quiet)
    if not resolved and not bad_urls:
        return  # a feed with nothing new
    plan = plan_run(settings, resolved)
    plan.rejected[:0] = bad_urls
    if not plan.inputs:
        report_errors(plan.rejected)
        raise typer.Exit(1)
    client = None
    if plan.fly is not None:
        if not quiet or dry_run:
            out.print(plan.fly.describe(), highlight=False)
        if dry_run:
            return
        if not plan.fly.estimate.fits_budget:
            out.print(
                "[yellow]the estimate is over the budget: the run stops at the cap and "
                "can be resumed[/yellow]"
            )
        if not yes and not typer.confirm("Start the machines?", default=True):
            raise typer.Exit(1)
        from whisperfarm.fly.config import ask_fly_first, fly_client

        client = fly_client(settings)
        ask_fly_first(client)
    # Standby workers the launcher started (whisperfarm.launch), if it did
    fleet, fly = fleets(plan, client, standby=ctx.obj)
    if dry_run:
        out.print(f"plan: {fleet.description}; nothing started (--dry-run)")
        return
    warn_if_exposed(settings.host)
    reporter = RunReporter(out, quiet=quiet)
    # SIGTERM and SIGHUP end the run as Ctrl-C does: machines destroyed, workers stopped.
    with stop_signals():
        try:
            summary = plan.farm(fleet, reporter).transcribe(plan.inputs, out_dir, format_list)
        finally:
            reporter.close()
            if fly is not None and fly.leftovers:
                left = ", ".join(fly.leftovers)
                err.print(
                    f"[yellow]warning:[/yellow] could not destroy or stop machine(s) {left}:"
                    " run 'whisperfarm machines reap'",
                    highlight=False,
                )
    reporter.summary(summary, out_dir)
    if plan.fly is not None and not quiet:
        with Ledger(settings.ledger_path) as ledger:
            spent = MachineStore(ledger).spend(plan.run_id)
        estimate = plan.fly.estimate
        out.print(
            f"  estimate before the run: {estimate.wall_seconds / 60:.1f} min, "
            f"${estimate.cost:.2f} · actual: {summary.wall_seconds / 60:.1f} min, ${spent:.2f}",
            highlight=False,
        )
    report_errors([f"{episode.name}: {episode.error}" for episode in summary.failed])
    report_errors(plan.rejected)
    if summary.failed or plan.rejected:
        raise typer.Exit(1)


@app.command()
@friendly
def worker(
    url: Annotated[
        str,
        typer.Option(
            help="Coordinator URL, as 'transcribe' or 'serve' printed it.",
            envvar="WHISPERFARM_URL",
        ),
    ],
    token: Annotated[
        str, typer.Option(help="The run's token, as printed.", envvar="WHISPERFARM_TOKEN")
    ],
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model [default: all cores].")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Load this model (name or directory) at start; each job still runs its own."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda (an NVIDIA GPU) or auto: cuda when there is one [default: auto]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_JOBS_PER_CLAIM,
            help=f"Chunks claimed and decoded at once, 1-{MAX_JOBS_PER_CLAIM} "
            f"[default: {BATCH_DEFAULTS}].",
        ),
    ] = None,
    prefetch: Annotated[
        bool | None,
        typer.Option(
            "--prefetch/--no-prefetch",
            metavar="",  # a flag: no <bool> in --help
            help="Claim the next chunks and download their audio while these decode [default: on].",
        ),
    ] = None,
) -> None:
    """Join a running farm from this machine and work until the queue is empty.

    Example: `whisperfarm worker --url http://10.0.0.5:8765 --token abc123`
    """
    from worker.__main__ import main as worker_main
    from worker.config import WorkerConfig

    # The flags beat the environment, which still gives the rest (WHISPERFARM_MODEL_DIR …).
    given = {
        "threads": threads or None,
        "preload_model": model or None,
        "device": device or None,
        "batch_size": batch_size,
        "prefetch": prefetch,
    }
    flags = WorkerConfig.for_worker(
        url=url, token=token, **{name: value for name, value in given.items() if value is not None}
    )
    raise typer.Exit(worker_main({**os.environ, **flags.to_env()}))


def _resolve_inputs(
    inputs: list[str], settings: Settings, *, latest: int, quiet: bool
) -> tuple[list[Path], list[str]]:
    """Local files for the arguments (URLs and feeds downloaded, '-' read: sources.py),
    and a line for each that gave none."""
    from contextlib import ExitStack

    from whisperfarm.decoding import options_key
    from whisperfarm.sources import needs_downloader, resolve_inputs

    with ExitStack() as stack:
        downloader = None
        if needs_downloader(inputs):  # files alone: no HTTP client imported or opened
            from whisperfarm.download import BarProgress, Downloader, http_client

            progress = BarProgress(err) if err.is_terminal and not quiet else None
            client = stack.enter_context(http_client())
            downloader = Downloader(client, settings.downloads_dir, progress=progress)
        resolved = resolve_inputs(
            inputs,
            downloader,
            ledger_path=settings.ledger_path,
            model=settings.model,
            options_key=options_key(settings.decoding().options()),
            latest=latest,
            stdin=getattr(sys.stdin, "buffer", None),  # None without a stdin
        )
    if not quiet:
        for note in resolved.notes:
            out.print(note, highlight=False, markup=False)
        if not resolved.paths and not resolved.rejected:
            out.print("nothing new to transcribe")
    return resolved.paths, resolved.rejected
