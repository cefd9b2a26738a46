"""The fleet commands: ``serve`` (coordinator for outside workers), ``machines`` and
``machines reap`` (Fly machines this tool started), ``cost`` (what runs cost)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from whisperfarm.cli import Formats, OutDir, Quiet, app, err, friendly, out

machines_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(machines_app, name="machines")


@app.command()
@friendly
def serve(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Files to add to the queue (optional).")
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
) -> None:
    """Run the coordinator alone for queued episodes; workers join from anywhere.

    Serves FILES and every unfinished episode of the same model in the ledger, writes each
    transcript as its last chunk comes in, and exits when all are done. Any box with the
    package or the Docker image joins with the printed 'whisperfarm worker' command.

    Example: `whisperfarm serve talk.mp3 --host :: --port 8765 -m small.en`
    """
    from whisperfarm.cli.run import _warn_if_exposed
    from whisperfarm.console import RunReporter
    from whisperfarm.farm import Farm, unfinished_sources
    from whisperfarm.local import LocalFleet
    from whisperfarm.settings import load_settings, parse_formats

    settings = load_settings(model=model, formats=formats, host=host, port=port)
    paths = list(dict.fromkeys([*(inputs or []), *unfinished_sources(settings)]))
    if not paths:
        err.print("nothing to serve: give files, or queue some with 'whisperfarm transcribe'")
        raise typer.Exit(1)
    _warn_if_exposed(settings.host)
    import secrets

    run_id = secrets.token_hex(4)
    fleet = LocalFleet(workers, 1, logs_dir=settings.logs_dir, run_id=run_id)
    reporter = RunReporter(out, quiet=quiet)
    try:
        summary = Farm(settings, fleet, reporter, run_id=run_id).transcribe(
            paths, out_dir, parse_formats(settings.formats)
        )
    finally:
        reporter.close()
    reporter.summary(summary, out_dir)
    if summary.failed:
        raise typer.Exit(1)


@machines_app.callback()
@friendly
def machines(ctx: typer.Context) -> None:
    """Fly machines this tool started (from the ledger): state, size, region, age, cost.

    Example: `whisperfarm machines`
    """
    if ctx.invoked_subcommand is not None:
        return
    from whisperfarm.ledger import Ledger, machine_cost
    from whisperfarm.settings import load_settings

    settings = load_settings()
    ledger = Ledger(settings.ledger_path)
    rows = ledger.machines()
    if not rows:
        out.print("no machines started yet (runs with --backend fly start them)")
        return
    now = ledger.clock()
    table = Table("machine", "run", "state", "size", "region", "age", "cost", box=None)
    for row in rows:
        end = row["destroyed_at"] or row["stopped_at"] or now
        table.add_row(
            row["id"],
            row["run_id"],
            row["state"],
            row["size"],
            row["region"] or "-",
            _age(end - row["created_at"]),
            f"${machine_cost(row, now):.4f}",
        )
    out.print(table)
    alive = [r for r in rows if r["state"] != "destroyed"]
    if alive:
        out.print(
            f"{len(alive)} not known to be destroyed: 'whisperfarm machines reap' cleans up"
            " after a crash"
        )


@machines_app.command("reap")
@friendly
def machines_reap(
    everything: Annotated[
        bool, typer.Option("--all", help="Also machines of runs still going.")
    ] = False,
    fly_app: Annotated[
        str | None, typer.Option("--app", help="The worker app [default: $FLY_APP].")
    ] = None,
) -> None:
    """Destroy machines whisperfarm left behind (found by their metadata on Fly).

    Example: `whisperfarm machines reap`
    """
    from whisperfarm.errors import UsageError
    from whisperfarm.fly.fleet import fly_client, reap
    from whisperfarm.ledger import Ledger
    from whisperfarm.settings import load_settings

    settings = load_settings(fly_app=fly_app)
    if not settings.fly_app:
        raise UsageError("set FLY_APP or pass --app: the app whose machines to reap")
    result = reap(fly_client(settings), Ledger(settings.ledger_path), everything=everything)
    out.print(
        f"destroyed {len(result.destroyed)} machine(s)"
        + (f": {', '.join(result.destroyed)}" if result.destroyed else "")
    )
    if result.kept:
        out.print(f"kept {len(result.kept)} of runs still going (--all to destroy them too)")
    if result.failed:
        err.print(f"[red]error:[/red] could not destroy {', '.join(result.failed)}; try again")
        raise typer.Exit(1)


@app.command()
@friendly
def cost() -> None:
    """Spend per run and per episode: machine time × price, from the ledger.

    Example: `whisperfarm cost`
    """
    from whisperfarm.costs import cost_report
    from whisperfarm.ledger import Ledger
    from whisperfarm.settings import load_settings

    report = cost_report(Ledger(load_settings().ledger_path))
    if not report:
        out.print("no runs yet")
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
    for run in report:
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
    out.print(f"total ${sum(r.spent for r in report):.4f}")


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
