"""Chaos run: transcribe the sample on Fly (the fake Machines API) and local workers while
killing workers, the coordinator and machines at random; then check nothing was lost.

The fake (tests/fakefly) runs as a process and starts a real worker for every machine.
With a seeded random schedule the script

- kills a local worker with SIGKILL (found among the CLI's children by its
  WHISPERFARM_WORKER_ID),
- crashes a started machine (``POST /_fake/machines/{id}/crash``),
- kills the CLI itself (the coordinator) with SIGKILL, then runs the same command again
  to resume,

and once a run finishes it prints the faults injected, the chunks lost and stored twice
(both must be 0), the machines left behind (must be 0) and the final transcript's word
error rate. It exits 1 if any of those is off, or if a run failed other than by being
killed (it is run again, as a user would, and the failure reported).

    python scripts/chaos.py [--seed 1] [--faults 8] [--coordinator-kills 2]

Not part of CI: one run takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.evaluation import word_error_rate  # noqa: E402

APP = "whisperfarm-chaos"
FLY_TOKEN = "fake-chaos-token"
WORKER_ID = re.compile(rb"^WHISPERFARM_WORKER_ID=(.*)$")


@dataclass
class Chaos:
    rng: random.Random
    faults_left: int
    coordinator_kills_left: int
    fake_url: str
    injected: Counter[str] = field(default_factory=Counter)
    orphans: set[int] = field(default_factory=set)  # workers of killed CLIs

    def log(self, message: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def inject(self, cli: subprocess.Popen[bytes]) -> bool:
        """One random fault. Returns True when it killed the CLI."""
        kinds = ["kill worker", "crash machine"]
        if self.coordinator_kills_left:
            kinds.append("kill coordinator")
        for kind in self.rng.sample(kinds, len(kinds)):
            if kind == "kill worker" and self._kill_worker(cli.pid):
                break
            if kind == "crash machine" and self._crash_machine():
                break
            if kind == "kill coordinator":
                self.orphans |= set(local_workers(cli.pid).values())
                os.kill(cli.pid, signal.SIGKILL)
                self.coordinator_kills_left -= 1
                self.log("killed the coordinator (CLI) with SIGKILL")
                break
        else:
            return False  # nothing to hit right now
        self.injected[kind] += 1
        self.faults_left -= 1
        return kind == "kill coordinator"

    def _kill_worker(self, cli_pid: int) -> bool:
        workers = local_workers(cli_pid)
        if not workers:
            return False
        name = self.rng.choice(sorted(workers))
        os.kill(workers[name], signal.SIGKILL)
        self.log(f"killed local worker {name} (pid {workers[name]}) with SIGKILL")
        return True

    def _crash_machine(self) -> bool:
        state = httpx.get(f"{self.fake_url}/_fake/state", timeout=10).json()
        started = sorted(m["id"] for m in state["machines"] if m["state"] == "started")
        if not started:
            return False
        machine = self.rng.choice(started)
        httpx.post(f"{self.fake_url}/_fake/machines/{machine}/crash", timeout=10)
        self.log(f"crashed machine {machine}")
        return True


def local_workers(parent: int) -> dict[str, int]:
    """Live worker processes started by ``parent``, by WHISPERFARM_WORKER_ID."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in environ:
            match = WORKER_ID.match(item)
            if match:
                found[match.group(1).decode()] = int(stat.parent.name)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.fakefly", "--port", "0", "--token", FLY_TOKEN),
            *("--app", APP, "--launch-workers", "--start-latency", "1"),
            *("--log-dir", str(workdir / "machines")),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert fake.stdout is not None
    line = fake.stdout.readline().strip()
    if not line.startswith("FAKEFLY_URL="):
        raise SystemExit(f"the fake Machines API did not start: {line!r}")
    return fake, line.split("=", 1)[1]


def results(home: Path) -> dict[str, Any]:
    with sqlite3.connect(home / "ledger.db") as conn:
        speech = conn.execute(
            "SELECT c.idx, c.state, r.body IS NOT NULL FROM chunks c"
            " LEFT JOIN results r ON r.chunk_id = c.id WHERE c.speech = 1 ORDER BY c.idx"
        ).fetchall()
        stored = conn.execute("SELECT coalesce(sum(chunks_done), 0) FROM workers").fetchone()[0]
        runs = conn.execute("SELECT state FROM runs ORDER BY started_at").fetchall()
        spent = conn.execute("SELECT coalesce(sum(spent), 0) FROM runs").fetchone()[0]
    lost = [idx for idx, state, has_result in speech if state != "done" or not has_result]
    done = sum(1 for _, state, _ in speech if state == "done")
    return {
        "chunks": len(speech),
        "lost": lost,
        # Every "stored" answer counts one chunk done for its worker: more answers than
        # done chunks is a chunk stored twice (the ledger holds one result per chunk).
        "duplicates": max(0, stored - done),
        "runs": [state for (state,) in runs],
        "spent": spent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=8, help="faults to inject in all")
    parser.add_argument("--coordinator-kills", type=int, default=2, help="at most this many")
    parser.add_argument("--gap", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"))
    parser.add_argument("--machines", type=int, default=2, help="--max-machines")
    parser.add_argument("--workers", type=int, default=1, help="local workers")
    parser.add_argument("--audio", type=Path, default=REPO / "samples" / "episode.mp3")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="whisperfarm-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home, out = workdir / "home", workdir / "out"
    reference = args.audio.with_suffix(".txt")
    fake, fake_url = start_fake(workdir)
    port = free_port()
    command = [
        *(sys.executable, "-m", "whisperfarm", "transcribe", str(args.audio), "-m", "tiny.en"),
        *("--backend", "fly", "--max-machines", str(args.machines), "--budget", "1"),
        *("--advertise-url", f"http://127.0.0.1:{port}", "--port", str(port), "--yes"),
        *("--workers", str(args.workers), "--threads", "1", "--out", str(out)),
        *("--format", "txt,json", "--quiet"),
    ]
    env = {
        **os.environ,
        "WHISPERFARM_HOME": str(home),
        "WHISPERFARM_FLY_API_URL": fake_url,
        "FLY_API_TOKEN": FLY_TOKEN,
        "FLY_APP": APP,
        "WHISPERFARM_FLY_POLL_SECONDS": "0.5",
        "WHISPERFARM_FLY_START_LATENCY": "2",
        "WHISPERFARM_FLY_STOP_MARGIN": "2",
        "WHISPERFARM_FLY_WORKER_GIVE_UP_SECONDS": "10",
        "WHISPERFARM_LEASE_SECONDS": "5",
    }
    chaos = Chaos(random.Random(args.seed), args.faults, args.coordinator_kills, fake_url)
    print(f"chaos: seed {args.seed}, up to {args.faults} faults, work in {workdir}", flush=True)
    started = time.monotonic()
    runs, last_code, last_error = 0, None, ""
    failures: list[str] = []  # runs that ended non-zero without being killed
    state: dict[str, Any] = {"machines": []}
    left: list[str] = []
    orphans_left: list[int] = []
    try:
        while runs < args.coordinator_kills + 4:
            runs += 1
            chaos.log(f"run {runs}: whisperfarm transcribe … --backend fly")
            with open(workdir / f"run-{runs}.err", "wb") as errors:
                cli = subprocess.Popen(
                    command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors
                )
                killed = False
                next_fault = time.monotonic() + chaos.rng.uniform(*args.gap)
                while cli.poll() is None:
                    time.sleep(0.2)
                    if chaos.faults_left and time.monotonic() >= next_fault:
                        killed = chaos.inject(cli) or killed
                        next_fault = time.monotonic() + chaos.rng.uniform(*args.gap)
                last_code = cli.wait()
            lines = (workdir / f"run-{runs}.err").read_text().splitlines()
            last_error = next((line for line in lines if line.startswith("error:")), "")
            if killed:
                continue
            chaos.log(f"run {runs} exited {last_code} {last_error}".rstrip())
            if last_code == 0:
                break
            failures.append(f"run {runs}: {last_error or f'exit {last_code}'}")
        # Machines of killed runs stop on their own (their worker gets 401 from the next
        # coordinator, or gives up): give them the time to.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            state = httpx.get(f"{fake_url}/_fake/state", timeout=10).json()
            left = [m["id"] for m in state["machines"] if m["state"] != "destroyed"]
            if not left:
                break
            time.sleep(0.5)
        orphans_left = [pid for pid in chaos.orphans if alive(pid)]
    finally:
        fake.send_signal(signal.SIGINT)
        try:
            fake.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fake.kill()
        for pid in chaos.orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    wall = time.monotonic() - started

    found = results(home)
    transcript = out / f"{args.audio.stem}.txt"
    wer = (
        word_error_rate(reference.read_text(), transcript.read_text())
        if transcript.exists() and reference.exists()
        else None
    )
    faults = ", ".join(f"{kind} ×{n}" for kind, n in sorted(chaos.injected.items())) or "none"
    print(f"runs: {runs} ({', '.join(found['runs'])}), last exit {last_code}, {wall:.0f}s")
    print(f"faults injected: {sum(chaos.injected.values())} ({faults})")
    print(f"chunks: {found['chunks']} with speech")
    lost = f"{len(found['lost'])} {found['lost']}" if found["lost"] else "0"
    print(f"chunks lost: {lost}")
    print(f"duplicates: {found['duplicates']}")
    print(f"machines: {len(state['machines'])} created, left {len(left)}")
    print(f"orphaned local workers still running at the end: {len(orphans_left)}")
    for failure in failures:
        print(f"failed on its own: {failure}")
    print(f"spend: ${found['spent']:.4f}")
    print(f"WER: {f'{wer:.2%}' if wer is not None else 'no transcript'}")
    ok = (
        last_code == 0
        and not failures
        and not found["lost"]
        and found["duplicates"] == 0
        and not left
        and wer is not None
        and wer <= 0.03
    )
    print("chaos: OK" if ok else "chaos: FAILED")
    if not args.keep and args.dir is None and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
