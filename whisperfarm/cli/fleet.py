"""The fleet commands: ``serve`` (coordinator for outside workers), ``machines``,
``machines warm`` and ``machines reap`` (Fly machines this tool started, and its warm pool
of stopped ones), ``machines check`` (will a Fly run work from here?), ``cost`` (what runs
cost)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from whisperfarm.cli.root import (
    Formats,
    OutDir,
    Quiet,
    app,
    err,
    fail,
    friendly,
    out,
    report_errors,
    warn_if_exposed,
)

machines_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(machines_app, name="machines")


# The Fly options the `machines` commands share.
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="The model runs will use: picks the default size."),
]
SizeOption = Annotated[
    str | None,
    typer.Option(help="performance-1x … performance-16x [default: suits the model]."),
]
ImageOption = Annotated[
    str | None, typer.Option(help="Worker image [default: registry.fly.io/APP:latest].")
]
AppOption = Annotated[str | None, typer.Option("--app", help="The worker app [default: $FLY_APP].")]


@app.command()
@friendly
def serve(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files to add to the queue (optional); for a URL or standard input, "
            "'whisperfarm transcribe … --workers 0' serves it the same way."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model of the episodes to serve.")
    ] = None,
    out_dir: OutDir = Path("."),
    formats: Formats = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Local workers to run too.")] = 0,
    host: Annotated[
        str | None, typer.Option(help="Listen address, e.g. :: for a WireGuard peer.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: any free port].")] = None,
    quiet: Quiet = False,
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            metavar="",  # a flag: no <bool> in --help
            help="Serve every unfinished episode of the model in the ledger too (those "
            "whose files still exist), into this --out.",
        ),
    ] = False,
) -> None:
    """Run the coordinator alone for FILES; workers join from anywhere.

    Serves FILES (with --queue, every unfinished episode of the same model in the ledger
    too), writes each transcript as its last chunk comes in, and exits when all are done.
    Any box with the package or the Docker image joins with the printed 'whisperfarm
    worker' command.

    Example: `whisperfarm serve talk.mp3 --host :: --port 8765 -m small.en`
    """
    from whisperfarm.console import RunReporter
    from whisperfarm.interrupts import stop_signals
    from whisperfarm.plan import fleets, plan_run
    from whisperfarm.settings import load_settings, parse_formats
    from whisperfarm.sources import needs_downloader
    from whisperfarm.transcripts import check_out_dir

    not_files = [given for given in inputs or [] if needs_downloader([given])]
    if not_files:
        fail(
            f"serve takes files, not {not_files[0]}: run 'whisperfarm transcribe "
            f"{not_files[0]} --workers 0', which downloads it and serves it the same way"
        )
    settings = load_settings(
        model=model, formats=formats, host=host, port=port
    ).checked_for_transcription()
    format_list = parse_formats(settings.formats)
    check_out_dir(out_dir)
    files = [Path(given) for given in inputs or []]
    plan = plan_run(settings, files, serving=True, queue=queue, workers=workers)
    if not plan.inputs:
        if plan.rejected:  # the files given: each one's line says why
            report_errors(plan.rejected)
            raise typer.Exit(1)
        fail(
            "nothing to serve: give files, or --queue for the unfinished episodes of "
            f"{settings.model} in the ledger"
        )
    warn_if_exposed(settings.host)
    fleet, _ = fleets(plan)
    reporter = RunReporter(out, quiet=quiet)
    with stop_signals():  # SIGTERM and SIGHUP end it as Ctrl-C does: workers stopped
        try:
            summary = plan.farm(fleet, reporter).transcribe(
                plan.inputs, out_dir, format_list, queued=plan.queued
            )
        finally:
            reporter.close()
    reporter.summary(summary, out_dir)
    report_errors([f"{episode.name}: {episode.error}" for episode in summary.failed])
    report_errors(plan.rejected)
    if summary.failed or plan.rejected:
        raise typer.Exit(1)


@machines_app.callback()
@friendly
def machines(ctx: typer.Context) -> None:
    """Fly machines this tool started (from the ledger): state, size, region, age, cost; and
    the warm pool of stopped machines, with what it costs to keep.

    A pool machine has a row for each run that started it, marked (pool).

    Example: `whisperfarm machines`
    """
    if ctx.invoked_subcommand is not None:
        return
    from whisperfarm.fly.pool import IDLE, describe_storage
    from whisperfarm.fly.store import MachineStore, from_pool, machine_done
    from whisperfarm.ledger import Ledger
    from whisperfarm.money import machine_cost
    from whisperfarm.settings import load_settings

    settings = load_settings()
    with Ledger(settings.ledger_path) as ledger:
        store = MachineStore(ledger)
        rows = store.machines()
        pool = store.pool_machines()
        now = ledger.clock()
    if not rows and not pool:
        out.print("no machines started yet (runs with --backend fly start them)")
        return
    if rows:
        table = Table("machine", "run", "state", "size", "region", "age", "cost", box=None)
        for row in rows:
            end = row["destroyed_at"] or row["stopped_at"] or now
            table.add_row(
                f"{row['id']} (pool)" if from_pool(row) else row["id"],
                row["run_id"],
                row["state"],
                row["size"],
                row["region"] or "-",
                _age(end - row["created_at"]),
                f"${machine_cost(row, now):.4f}",
            )
        out.print(table)
    # Created machines should be destroyed, pool machines stopped (back in the pool).
    alive = [r for r in rows if not machine_done(r)]
    if alive:
        out.print(
            f"{len(alive)} not known to be destroyed: 'whisperfarm machines reap' cleans up"
            " after a crash"
        )
    if pool:
        table = Table("pool machine", "name", "state", "size", "region", "run", "image", box=None)
        for pool_row in pool:
            table.add_row(
                pool_row["id"],
                pool_row["name"],
                pool_row["state"],
                pool_row["size"],
                pool_row["region"] or "-",
                pool_row["run_id"] or "-",
                pool_row["image"],
            )
        out.print(f"warm pool ({len(pool)}, states as last seen):")
        out.print(table)
        idle = sum(1 for row in pool if row["state"] in IDLE)
        out.print(
            f"{idle} stopped: no CPU or RAM billed, root filesystems "
            f"{describe_storage(idle, settings.fly_rootfs_gb)}",
            highlight=False,
            soft_wrap=True,
        )


@machines_app.command("warm")
@friendly
def machines_warm(
    count: Annotated[
        int,
        typer.Argument(
            help="Stopped machines to keep; 0 destroys the pool.", min=0, metavar="COUNT"
        ),
    ],
    model: ModelOption = None,
    machine_size: SizeOption = None,
    region: Annotated[str | None, typer.Option(help="Region for the machines.")] = None,
    image: ImageOption = None,
    fly_app: AppOption = None,
    rootfs_gb: Annotated[
        float | None,
        typer.Option(help="The image's unpacked size in GB, for the storage cost [default: 2]."),
    ] = None,
) -> None:
    """Keep COUNT stopped Fly machines ready: runs start them in seconds instead of
    creating machines at Fly's one a second.

    Creates the missing ones (not started), destroys extra ones and ones made for another
    image, size or region; machines a run going on uses are left alone, ones left running
    by a run that is over are stopped. Stopped, they run nothing and bill no CPU or RAM:
    Fly charges only their root filesystems ($0.15/GB-month). Use the same
    --model/--machine-size, --image and --region as your runs.

    Machines match by image name: to use a new image, deploy it under a new label
    (`fly deploy --build-only --push --image-label v2`), pass `--image
    registry.fly.io/APP:v2` to runs and to warm; warm replaces the pool machines made for
    another image. Redeploying :latest leaves the old machines in use.

    Example: `whisperfarm machines warm 20 -m small.en`
    """
    from whisperfarm.errors import UsageError
    from whisperfarm.fly.config import fly_client, worker_image, worker_size
    from whisperfarm.fly.pool import describe_storage, warm
    from whisperfarm.ledger import Ledger
    from whisperfarm.settings import load_settings

    settings = load_settings(
        model=model,
        machine_size=machine_size,
        region=region,
        image=image,
        fly_app=fly_app,
        fly_rootfs_gb=rootfs_gb,
    )
    if not settings.fly_app:
        raise UsageError("set FLY_APP or pass --app: the app to keep the warm pool in")
    size, worker = worker_size(settings), worker_image(settings)
    client = fly_client(settings)
    with Ledger(settings.ledger_path) as ledger:
        report = warm(
            client,
            ledger,
            count,
            image=worker,
            size=size,
            model=settings.model,
            region=settings.region,
            rootfs_gb=settings.fly_rootfs_gb,
        )
    where = f", region {settings.region}" if settings.region else ""
    out.print(
        f"warm pool of {settings.fly_app}: {report.stopped} stopped × {size.name} "
        f"(image {worker}{where}): created {len(report.created)}, kept {len(report.kept)}, "
        f"destroyed {len(report.destroyed)}",
        highlight=False,
        soft_wrap=True,
    )
    if report.stopped_now:
        out.print(
            f"stopped {len(report.stopped_now)} left running by a run that is over: "
            + ", ".join(report.stopped_now),
            highlight=False,
            soft_wrap=True,
        )
    if report.busy:
        out.print(
            f"{len(report.busy)} in use by a run now, left alone: each stops and comes back "
            "to the pool when its run ends",
            highlight=False,
        )
    if report.stopped:
        out.print(
            "stopped, they run nothing and bill no CPU or RAM; Fly bills their root "
            f"filesystems: {describe_storage(report.stopped, report.rootfs_gb)}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(
            "'whisperfarm transcribe --backend fly' starts these first; "
            "'whisperfarm machines warm 0' destroys them",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("nothing stopped is left to bill", highlight=False)
    if report.unstopped:
        err.print(
            f"[red]error:[/red] could not stop {', '.join(report.unstopped)}, left running by "
            "a run that is over: run 'whisperfarm machines reap'",
            highlight=False,
        )
    if report.failed:
        err.print(
            f"[red]error:[/red] could not destroy {', '.join(report.failed)}; try again",
            highlight=False,
        )
    if report.failed or report.unstopped:
        raise typer.Exit(1)
    if report.error:
        err.print(
            f"[red]error:[/red] created {len(report.created)} of the "
            f"{report.target - report.stopped + len(report.created)} missing: {report.error}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@machines_app.command("check")
@friendly
def machines_check(
    advertise_url: Annotated[
        str | None,
        typer.Option(
            help="The coordinator URL machines use, as for 'transcribe', e.g. "
            "http://laptop._peer.internal:8765."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Listen address, e.g. :: for a WireGuard peer.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: any free port].")] = None,
    model: ModelOption = None,
    machine_size: SizeOption = None,
    region: Annotated[str | None, typer.Option(help="Region for the machine.")] = None,
    image: ImageOption = None,
    fly_app: AppOption = None,
    reach_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds the worker has to reach the coordinator [default: 90]."),
    ] = None,
) -> None:
    """Check that Fly runs will work from here, in about a minute for about a cent: the
    token, the app, the image, and a round trip from one machine back to this coordinator.

    Serves a coordinator with nothing to do (--host/--port/--advertise-url as for
    'transcribe'), creates one worker machine as a run would, waits for its worker to
    reach the coordinator, destroys it, and says what it cost. One line per check; exits
    non-zero at the first that fails, naming the fix.

    Example: `whisperfarm machines check --host :: --port 8765 --advertise-url
    http://laptop._peer.internal:8765`
    """
    from whisperfarm.fly.check import Check, run_check
    from whisperfarm.fly.config import fly_client, fly_config
    from whisperfarm.interrupts import stop_signals
    from whisperfarm.settings import load_settings

    settings = load_settings(
        advertise_url=advertise_url,
        host=host,
        port=port,
        model=model,
        machine_size=machine_size,
        region=region,
        image=image,
        fly_app=fly_app,
        fly_reach_timeout=reach_timeout,
    )
    config = fly_config(settings)
    client = fly_client(settings)
    warn_if_exposed(settings.host)

    def show(check: Check) -> None:
        verdict = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        out.print(f"{verdict} {check.name:<8} {check.detail}", highlight=False, soft_wrap=True)

    out.print(
        f"checking Fly app {config.app} with one {config.size.name} machine "
        f"(image {config.image}); machines will call {config.advertise_url}",
        highlight=False,
        soft_wrap=True,
    )
    with stop_signals():  # SIGTERM and SIGHUP destroy the machine as Ctrl-C does
        report = run_check(settings, client, config, report=show)
    if not report.ok:
        failed = next((check for check in report.checks if not check.ok), None)
        what = f"the {failed.name} check failed" if failed else "the check did not finish"
        fail(f"{what}: Fly runs from here won't work until it passes (cost ${report.cost:.4f})")
    out.print(
        f"all checks passed: runs with --backend fly can use these settings "
        f"(cost ${report.cost:.4f})",
        highlight=False,
    )


@machines_app.command("reap")
@friendly
def machines_reap(
    everything: Annotated[
        bool, typer.Option("--all", metavar="", help="Also machines of runs still going.")
    ] = False,
    pool: Annotated[
        bool,
        typer.Option(
            "--pool",
            metavar="",
            help="Also destroy the warm pool: its stopped machines and those left running "
            "by runs that are over.",
        ),
    ] = False,
    fly_app: AppOption = None,
) -> None:
    """Destroy machines whisperfarm left behind (found by their metadata on Fly), and stop
    warm-pool machines left running.

    Stopped pool machines are the pool, and stay unless --pool.

    Example: `whisperfarm machines reap`
    """
    from whisperfarm.errors import UsageError
    from whisperfarm.fly.config import fly_client
    from whisperfarm.fly.reap import reap
    from whisperfarm.ledger import Ledger
    from whisperfarm.settings import load_settings

    settings = load_settings(fly_app=fly_app)
    if not settings.fly_app:
        raise UsageError("set FLY_APP or pass --app: the app whose machines to reap")
    client = fly_client(settings)
    with Ledger(settings.ledger_path) as ledger:
        result = reap(client, ledger, everything=everything, pool=pool)
    out.print(
        f"destroyed {len(result.destroyed)} machine(s)"
        + (f": {', '.join(result.destroyed)}" if result.destroyed else "")
    )
    if result.stopped:
        out.print(
            f"stopped {len(result.stopped)} pool machine(s) left running, back in the pool: "
            + ", ".join(result.stopped)
        )
    if result.idle:
        out.print(
            f"left the warm pool's {len(result.idle)} stopped machine(s) alone "
            "(--pool destroys them too)"
        )
    if result.kept:
        out.print(f"kept {len(result.kept)} of runs still going (--all to destroy them too)")
    if result.unstopped:
        err.print(f"[red]error:[/red] could not stop {', '.join(result.unstopped)}; try again")
    if result.failed:
        err.print(f"[red]error:[/red] could not destroy {', '.join(result.failed)}; try again")
    if result.failed or result.unstopped:
        raise typer.Exit(1)


@app.command()
@friendly
def cost() -> None:
    """Spend per run and per episode: machine time × price, from the ledger.

    Runs on Fly machines get a row each, with their episodes' shares; runs without
    machines (local or joined workers) cost nothing and are counted in one line.

    Example: `whisperfarm cost`
    """
    from whisperfarm.costs import cost_report
    from whisperfarm.ledger import Ledger
    from whisperfarm.settings import load_settings

    with Ledger(load_settings().ledger_path) as ledger:
        report = cost_report(ledger)
    if not report:
        out.print("no runs yet")
        return
    billed = [run for run in report if run.machines]
    local = len(report) - len(billed)
    if local:
        out.print(f"{local} run(s) without machines (local or joined workers): $0")
    if not billed:
        return
    table = Table(
        "run",
        "started",
        "backend",
        "state",
        "machines",
        "machine time",
        "spent",
        "budget",
        box=None,
    )
    for run in billed:
        table.add_row(
            run.run_id,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_at)),
            run.backend,
            run.state,
            str(run.machines),
            _age(run.machine_seconds),
            f"${run.spent:.4f}",
            f"${run.budget:.2f}" if run.budget is not None else "-",
        )
        for name, dollars in run.episodes.items():
            table.add_row("", "", f"  {name}", "", "", "", f"${dollars:.4f}", "")
    out.print(table)
    out.print(f"total ${sum(r.spent for r in billed):.4f}")


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
