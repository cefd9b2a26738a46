"""How a Fly run ends, measured against the fake Machines API (tests/fakefly) with real
workers: the numbers for issue 10's closing note.

    python scripts/bench_lifecycle.py unreachable [--max-machines 3] [--cap 600] [NAME=VALUE…]
        every machine's network is cut off from the coordinator (the fake's
        --unreachable all): machines created, most at once, left, and the time until the
        CLI gave up (or the cap, after which it is stopped with Ctrl-C)
    python scripts/bench_lifecycle.py signal SIGTERM|SIGHUP|SIGINT [--max-machines 3] \
            WHISPERFARM_FLY_START_LATENCY=2
        the signal to the CLI two seconds after --max-machines machines run: how long it
        took to exit, with what code, and the machines still running then and 35 s later
        (a start latency of 2 s makes the fleet want more than one machine for the
        4-minute sample)

NAME=VALUE pairs go into the CLI's environment, e.g. WHISPERFARM_FLY_REACH_TIMEOUT=20.
Not part of CI: a run takes up to a few minutes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakefly.process import FakeFlyProcess  # noqa: E402

APP, TOKEN = "whisperfarm-workers", "fake-token"
SAMPLE = REPO / "samples" / "episode.mp3"


def cli(
    workdir: Path, fake: FakeFlyProcess, machines: int, env: dict[str, str]
) -> subprocess.Popen[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "whisperfarm", "transcribe", str(SAMPLE), "-m", "tiny.en"),
            *("--backend", "fly", "--advertise-url", f"http://127.0.0.1:{port}"),
            *("--port", str(port), "--max-machines", str(machines), "--yes"),
            *("--out", str(workdir / "out")),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "WHISPERFARM_HOME": str(workdir / "home"),
            "WHISPERFARM_FLY_API_URL": fake.url,
            "FLY_API_TOKEN": TOKEN,
            "FLY_APP": APP,
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def running(state: dict[str, Any]) -> int:
    return sum(m["state"] not in ("destroyed", "stopped", "created") for m in state["machines"])


def last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    return lines[-1] if lines else "(no error line)"


def unreachable(workdir: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    fake = FakeFlyProcess(workdir, "--unreachable", "all", token=TOKEN, app=APP)
    try:
        started = time.monotonic()
        process = cli(workdir, fake, args.max_machines, env)
        try:
            _, stderr = process.communicate(timeout=args.cap)
            how = f"gave up by itself: exit {process.returncode}"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=300)
            how = f"still going at the {args.cap:.0f}s cap (then Ctrl-C, exit {process.returncode})"
        took = time.monotonic() - started
        state = fake.state()
        machines = state["machines"]
        print(
            f"unreachable coordinator, --max-machines {args.max_machines}: {how} after {took:.1f}s"
        )
        print(
            f"  machines created {len(machines)}, most at once {state['max_concurrent_active']}, "
            f"left {sum(m['state'] != 'destroyed' for m in machines)}; worker exit codes "
            f"{[m['exit_code'] for m in machines]}"
        )
        print(f"  {last_error(stderr)}")
    finally:
        fake.close()


def signalled(workdir: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    signum = signal.Signals[args.signal]
    fake = FakeFlyProcess(workdir, token=TOKEN, app=APP)
    try:
        process = cli(workdir, fake, args.max_machines, env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and running(fake.state()) < args.max_machines:
            if process.poll() is not None:
                raise SystemExit(
                    f"the run ended (exit {process.returncode}) before {args.max_machines} "
                    "machines ran: give it more work per machine, e.g. "
                    "WHISPERFARM_FLY_START_LATENCY=2"
                )
            time.sleep(0.5)
        time.sleep(2)
        print(f"{running(fake.state())} machine(s) running; sending {signum.name}")
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        took = time.monotonic() - sent
        left = running(fake.state())
        time.sleep(35)
        later = running(fake.state())
        print(
            f"{signum.name}: the CLI exited {process.returncode} after {took:.1f}s; machines "
            f"still running then {left}, 35 s later {later}"
        )
        print(f"  {last_error(stderr)}")
    finally:
        fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    cut = commands.add_parser("unreachable", help="every machine cut off from the coordinator")
    cut.add_argument("--cap", type=float, default=600.0, help="seconds before Ctrl-C")
    sig = commands.add_parser("signal", help="a signal to the CLI mid-run")
    sig.add_argument("signal", choices=["SIGTERM", "SIGHUP", "SIGINT"])
    for command in (cut, sig):
        command.add_argument("--max-machines", type=int, default=3)
        command.add_argument("env", nargs="*", metavar="NAME=VALUE")
    args = parser.parse_args()
    env = dict(pair.split("=", 1) for pair in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="whisperfarm-lifecycle-"))
    if args.what == "unreachable":
        unreachable(workdir, args, env)
    else:
        signalled(workdir, args, env)


if __name__ == "__main__":
    main()
