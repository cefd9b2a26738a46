"""Serve the fake Machines API: ``python -m tests.fakefly --port 0 [options]``.

Prints ``FAKEFLY_URL=http://HOST:PORT`` on stdout once the socket is listening (useful with
``--port 0``), then serves until SIGINT/SIGTERM, killing any worker processes on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import socket
import sys

import uvicorn

from tests.fakefly.app import create_app
from tests.fakefly.launcher import SubprocessLauncher
from tests.fakefly.rules import UNREACHABLE_HOST, Faults

EVERY_MACHINE = 1_000_000  # a fault count no test uses up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakefly", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--app", default="whisperfarm-workers", help="the one app served")
    parser.add_argument("--token", default="fake-token", help="the token accepted")
    parser.add_argument("--region", default="ord", help="region when a create names none")
    parser.add_argument(
        "--start-latency", type=float, default=1.0, metavar="S", help="create -> started"
    )
    parser.add_argument(
        "--warm-start-latency",
        type=float,
        default=None,
        metavar="S",
        help="start of a machine whose image is unpacked -> started (default: --start-latency)",
    )
    parser.add_argument(
        "--update-launches",
        action="store_true",
        help="an update starts a stopped machine even with skip_launch",
    )
    parser.add_argument(
        "--stop-latency",
        type=float,
        default=0.0,
        metavar="S",
        help="stopping -> stopped, for machines without a process",
    )
    launch = parser.add_argument_group("processes")
    launch.add_argument(
        "--launch-workers",
        action="store_true",
        help="run `python -m worker` for every started machine",
    )
    launch.add_argument(
        "--launch-cmd",
        metavar="CMD",
        help="run CMD (shell-split) instead; implies --launch-workers",
    )
    launch.add_argument("--log-dir", metavar="DIR", help="write each process's output here")
    limits = parser.add_argument_group("rate limits")
    limits.add_argument("--no-rate-limit", action="store_true")
    limits.add_argument(
        "--retry-after", action="store_true", help="send Retry-After with 429s (Fly may not)"
    )
    faults = parser.add_argument_group("faults (also settable by POST /_fake/faults)")
    faults.add_argument("--capacity-409", type=int, default=0, metavar="N")
    faults.add_argument("--capacity-412", type=int, default=0, metavar="N")
    faults.add_argument("--server-errors", type=int, default=0, metavar="N")
    faults.add_argument(
        "--create-408",
        type=int,
        default=0,
        metavar="N",
        help="creates that make the machine but answer 408",
    )
    faults.add_argument("--never-start", type=int, default=0, metavar="N")
    faults.add_argument(
        "--die",
        type=int,
        default=0,
        metavar="N",
        help="machines that die --die-after seconds after starting",
    )
    faults.add_argument("--die-after", type=float, default=1.0, metavar="S")
    faults.add_argument(
        "--capacity-503",
        type=int,
        default=0,
        metavar="N",
        help='creates that answer 503 "out of capacity" with status insufficient_capacity',
    )
    faults.add_argument(
        "--start-error",
        type=int,
        default=0,
        metavar="N",
        help='starts that answer 200 with status "error" and start nothing',
    )
    faults.add_argument(
        "--unhealthy",
        type=int,
        default=0,
        metavar="N",
        help="machines whose host is unreachable: served with incomplete_config",
    )
    faults.add_argument(
        "--list-lag",
        type=float,
        default=0.0,
        metavar="S",
        help="List answers as things were S seconds ago (Get is current)",
    )
    faults.add_argument(
        "--list-empty", type=int, default=0, metavar="N", help="List requests that answer []"
    )
    faults.add_argument(
        "--unreachable",
        type=_count_or_all,
        default=0,
        metavar="N|all",
        help="machines whose network can't reach the coordinator: their process sees every "
        f"URL in config.env pointed at a closed loopback port ({UNREACHABLE_HOST})",
    )
    return parser.parse_args(argv)


def _count_or_all(value: str) -> int:
    return EVERY_MACHINE if value == "all" else int(value)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    launcher = None
    if args.launch_cmd or args.launch_workers:
        command = shlex.split(args.launch_cmd) if args.launch_cmd else None
        launcher = SubprocessLauncher(command, log_dir=args.log_dir)
    faults = Faults(
        capacity_409=args.capacity_409,
        capacity_412=args.capacity_412,
        server_errors=args.server_errors,
        create_408=args.create_408,
        never_start=args.never_start,
        die=args.die,
        die_after=args.die_after,
        capacity_503=args.capacity_503,
        start_error=args.start_error,
        unhealthy=args.unhealthy,
        list_lag=args.list_lag,
        list_empty=args.list_empty,
        unreachable=args.unreachable,
    )
    app = create_app(
        app=args.app,
        token=args.token,
        region=args.region,
        start_latency=args.start_latency,
        stop_latency=args.stop_latency,
        warm_start_latency=args.warm_start_latency,
        update_launches=args.update_launches,
        launcher=launcher,
        faults=faults,
        rate_limit=not args.no_rate_limit,
        retry_after=args.retry_after,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"FAKEFLY_URL=http://{shown}:{port}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    # Ctrl-C or FakeFlyProcess.close's SIGINT: uvicorn shuts down, then raises the signal
    # again as KeyboardInterrupt; the fake has nothing more to say about it than exit 0.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
