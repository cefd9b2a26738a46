"""Fleet scale: the real `whisperfarm transcribe --backend fly` with a hundred simulated
machines on the fake Machines API (tests/fakefly), over 1,000+ chunks.

The fake starts every created machine after ``--start-latency`` seconds and runs
scripts/sim_worker.py in it: the real worker loop and client, with a transcriber that sleeps
chunk duration ÷ the machine's speed. Each machine also spends 0..``--join-delay`` seconds
(drawn from its id) booting and loading its model before its first claim, so machines start
20–40 s after their create, as on Fly. Speeds spread ±20 % around ``--speed`` (default 2.7×
realtime: small.en on performance-2x). The episode is ``--chunks`` × 25 s of a tone with a
2-second pause every 25 s (sound in every chunk, so none is skipped as silent; the cutter
cuts in each pause), generated with ffmpeg into .bench/ when missing.

Time runs at its real pace (no scaling): Fly's create rate (1 a second, burst 3) lives in
the real fleet controller, and at 2.7× realtime a hundred workers claim about ten chunks a
second, little for the machine's cores. ``--time-scale K`` divides start latencies and
multiplies speeds by K to make a run shorter, but leaves the create rate as it is.

The makespan (first create → last result) is compared with two ideals:
  simple   total work ÷ (machines × mean speed) + longest chunk ÷ mean speed + mean start
           latency (create → first claim), as if every machine were created at once;
  ramp     the same with each machine joining when it really could: a perfect scheduler
           with the measured create times (Fly's create rate spreads a hundred creates
           over 100 s) and start latencies, plus the longest chunk.

``--pool`` first keeps ``--machines`` stopped machines with the real command
(``whisperfarm machines warm N``, creates at Fly's create rate, not launched), waits until
the fake has unpacked their image (``--start-latency``), and only then times the run,
which updates and starts them (per-machine limits: all at once) instead of creating. A
pooled machine's start request → ``started`` takes ``--pool-start-latency`` (default 3 s:
Fly starts a stopped machine whose rootfs is ready in a few seconds; an assumption, not a
measurement), then the same 0..``--join-delay`` s of boot and model load as a created
machine. A pool machine's makespan and start latency count from its update request.
Run it with and without ``--pool`` to compare; each prints its makespan against its ideal.

``--list-lag S`` makes the fake's List answer as things were S seconds ago (Fly's List is
eventually consistent; Get stays current). Every run prints what it sent per action, how
many requests the fake's per-action limits refused (429), the most machines started at
once and how many were left when the CLI ended.

``--link MBIT`` puts the coordinator behind a link capped at MBIT Mbit/s
(scripts/link_proxy.py: a TCP proxy whose rate every machine's bytes share, both
directions, as a laptop's uplink is; 0: the proxy without a cap, which only counts). The
machines are given the proxy's address; the real worker loop downloads and decodes every
chunk's audio. ``--chunk-format wav|opus|flac`` sets what the chunks travel as (the CLI's
``auto`` is Opus for a fleet). The run then prints the bytes that crossed the link and the
seconds it was busy. ``--slow F`` makes a fraction F of the machines (drawn from their ids)
run at ``--slow-speed`` × their speed, and prints the tail: from the last first claim of a
chunk (the queue empty) to the last result, and how many machines sat idle in it.

    python scripts/bench_fleet.py [--chunks 1050] [--machines 100] [--budget 1.00] [--pool]
                                  [--list-lag 3] [--link 20] [--chunk-format wav]
                                  [--slow 0.05]

The 1-hour episode is ``--chunks 144``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from sim_worker import machine_profile  # noqa: E402

from whisperfarm.fly.policy import machine_speed  # noqa: E402
from whisperfarm.fly.pricing import size_named  # noqa: E402
from whisperfarm.media import ffmpeg_exe  # noqa: E402
from whisperfarm.money import machine_cost  # noqa: E402

TOKEN = "fake-token"
APP = "whisperfarm-workers"
PERIOD = 25.0  # seconds from one of the tone's pauses to the next: one chunk each
PAUSE = 2.0  # long enough (over 5 % of a chunk) for the cutter to take it as a pause


def tones(chunks: int) -> Path:
    """``chunks`` × 25 s of a 440 Hz tone, each period ending in 2 s of near silence."""
    path = REPO / ".bench" / f"tones-{chunks}x{PERIOD:g}s.flac"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        level = f"if(lt(mod(t,{PERIOD:g}),{PERIOD - PAUSE:g}),0.3,0.002)"
        subprocess.run(
            [
                *(ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"),
                *("-i", f"sine=frequency=440:sample_rate=16000:duration={chunks * PERIOD:g}"),
                *("-af", f"volume='{level}':eval=frame", "-ac", "1", "-c:a", "flac", str(path)),
            ],
            check=True,
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql)]
    finally:
        conn.close()


def fluid_finish(available: list[tuple[float, float]], work: float) -> float:
    """The time a perfectly divisible job of ``work`` audio seconds ends on machines that
    each join at ``at`` and then do ``speed`` audio seconds a second: (at, speed) pairs."""
    joined = sorted(available)
    done, rate, now = 0.0, 0.0, joined[0][0]
    for at, speed in joined:
        if done + rate * (at - now) >= work:
            break
        done += rate * (at - now)
        rate, now = rate + speed, at
    return now + (work - done) / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1050)
    parser.add_argument("--machines", type=int, default=100, help="--max-machines")
    parser.add_argument("--budget", type=float, default=1.00)
    parser.add_argument("--speed", type=float, default=2.7, help="mean × realtime of a machine")
    parser.add_argument("--start-latency", type=float, default=20.0, help="create → started")
    parser.add_argument("--join-delay", type=float, default=20.0, help="started → claiming, max")
    parser.add_argument(
        "--pool", action="store_true", help="warm a pool of stopped machines first (untimed)"
    )
    parser.add_argument(
        "--pool-start-latency", type=float, default=3.0, help="stopped machine: start → started"
    )
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument(
        "--list-lag", type=float, default=0.0, help="the fake's List lags by this many seconds"
    )
    parser.add_argument(
        "--link", type=float, help="Mbit/s of the coordinator's link, shared (0: uncapped proxy)"
    )
    parser.add_argument("--chunk-format", choices=["auto", "wav", "opus", "flac"], default="auto")
    parser.add_argument("--slow", type=float, default=0.0, help="fraction of slow machines")
    parser.add_argument("--slow-speed", type=float, default=0.25, help="× a slow one's speed")
    parser.add_argument(
        "--backups",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="back up stragglers on idle machines (WHISPERFARM_BACKUPS)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    k = args.time_scale
    audio = tones(args.chunks)
    size = size_named("performance-2x")
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=REPO / ".bench"))
    sim_env = {
        "SIM_SPEED": str(args.speed * k),
        "SIM_JOIN_DELAY": str(args.join_delay / k),
        "SIM_SPREAD": "0.2",
        "SIM_SLOW": str(args.slow),
        "SIM_SLOW_SPEED": str(args.slow_speed),
    }
    fake = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.fakefly", "--port", "0", "--token", TOKEN),
            *("--app", APP, "--start-latency", str(args.start_latency / k)),
            *("--warm-start-latency", str(args.pool_start_latency / k)),
            *(
                "--launch-cmd",
                shlex.join([sys.executable, str(REPO / "scripts" / "sim_worker.py")]),
            ),
            *("--log-dir", str(work / "machines")),
            *("--list-lag", str(args.list_lag)),
        ],
        cwd=REPO,
        env={**os.environ, **sim_env},
        stdout=subprocess.PIPE,
        stderr=(work / "fakefly.log").open("w"),
        text=True,
    )
    proxy: subprocess.Popen[str] | None = None
    try:
        assert fake.stdout is not None
        line = fake.stdout.readline().strip()
        if not line.startswith("FAKEFLY_URL="):
            raise SystemExit(f"the fake Machines API did not start: {line!r}")
        fake_url = line.split("=", 1)[1]
        port = free_port()
        advertised = port
        if args.link is not None:
            proxy = subprocess.Popen(
                [
                    *(sys.executable, str(REPO / "scripts" / "link_proxy.py")),
                    *("--upstream", str(port), "--mbit", str(args.link)),
                    *("--stats", str(work / "link.txt")),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proxy.stdout is not None
            advertised = int(proxy.stdout.readline())
        env = {
            **os.environ,
            "WHISPERFARM_HOME": str(work / "home"),
            "WHISPERFARM_FLY_API_URL": fake_url,
            "FLY_API_TOKEN": TOKEN,
            "FLY_APP": APP,
            # What the policy assumes: the simulated machines' mean speed and start latency.
            "WHISPERFARM_SPEED": str(args.speed * k / machine_speed("", size.cpus, 1.0)),
            "WHISPERFARM_FLY_START_LATENCY": str((args.start_latency + args.join_delay / 2) / k),
            "WHISPERFARM_FLY_POLL_SECONDS": "1",
            # The tones stand in for speech (the simulated workers transcribe nothing); the
            # speech model rightly hears none in them, so cut by loudness alone.
            "WHISPERFARM_VAD": "false",
            "WHISPERFARM_CHUNK_FORMAT": args.chunk_format,
            "WHISPERFARM_BACKUPS": str(args.backups).lower(),
        }
        warm_seconds = None
        if args.pool:
            warmed = time.time()
            warm = subprocess.run(
                [
                    *(sys.executable, "-m", "whisperfarm", "machines", "warm"),
                    *(str(args.machines), "--model", "tiny.en", "--machine-size", size.name),
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            if warm.returncode != 0:
                raise SystemExit(f"machines warm failed:\n{warm.stdout}{warm.stderr[-3000:]}")
            print(warm.stdout.strip())
            time.sleep(args.start_latency / k)  # the last one's image unpacked
            warm_seconds = time.time() - warmed
        command = [
            *(sys.executable, "-m", "whisperfarm", "transcribe", str(audio)),
            *("--model", "tiny.en", "--backend", "fly", "--machine-size", size.name),
            *("--max-machines", str(args.machines), "--budget", f"{args.budget:.2f}"),
            *("--advertise-url", f"http://127.0.0.1:{advertised}", "--port", str(port)),
            *("--out", str(work / "out"), "--format", "txt", "--yes"),
        ]
        started = time.time()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.time() - started
        state = httpx.get(f"{fake_url}/_fake/state", timeout=30).json()
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGINT)
            proxy.wait(timeout=30)
        fake.send_signal(signal.SIGINT)
        try:
            fake.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fake.kill()
    if result.returncode != 0:
        raise SystemExit(f"transcribe failed ({result.returncode}):\n{result.stderr[-3000:]}")

    db = work / "home" / "ledger.db"
    run = rows(db, "SELECT * FROM runs")[-1]
    chunks = rows(db, "SELECT * FROM chunks WHERE speech = 1")
    machines = rows(db, f"SELECT * FROM machines WHERE run_id = '{run['id']}'")
    # By machine: a pool machine's worker is named by its machine id and the run.
    first_seen = {
        w["machine_id"]: w["first_seen"]
        for w in rows(db, "SELECT * FROM workers")
        if w["machine_id"]
    }
    t0 = min(m["created_at"] for m in machines)
    end = max(c["finished_at"] for c in chunks)
    makespan = end - t0
    lengths = [c["end"] - c["start"] for c in chunks]
    total, longest = sum(lengths), max(lengths)
    profiles = {m["id"]: machine_profile(m["id"], sim_env) for m in machines}
    joined = [m for m in machines if m["id"] in first_seen]
    speeds = [profiles[m["id"]][0] for m in joined]
    latencies = [first_seen[m["id"]] - m["created_at"] for m in joined]
    mean_speed = statistics.mean(speeds)
    simple = total / (len(joined) * mean_speed) + longest / mean_speed + statistics.mean(latencies)
    ramp = (
        fluid_finish([(first_seen[m["id"]] - t0, profiles[m["id"]][0]) for m in joined], total)
        + longest / mean_speed
    )
    spent = sum(machine_cost(m, time.time()) for m in machines)
    billed = 0.0  # Fly's bill: each start until the next stop (a stopped machine pays none)
    for machine in state["machines"]:
        since = None
        for entry in machine["history"]:
            if entry["state"] == "starting" and since is None:
                since = entry["at"]
            elif entry["state"] in ("stopped", "destroying", "destroyed") and since is not None:
                billed += (entry["at"] - since) * size.usd_per_second
                since = None
    attempts = sum(c["attempt"] for c in chunks)

    pooled = sum(1 for m in machines if m["pool"])
    # The CLI's own plan before the run and its estimate beside the actual after it.
    for line in result.stdout.splitlines():
        if line.lstrip().startswith(("plan:", "about ", "estimate before the run")):
            print(line.strip())
    print(
        f"\n{'warm pool' if args.pool else 'no pool'}: {pooled} pool machines started, "
        f"{len(machines) - pooled} created by the run"
        + (f" (pool warmed in {warm_seconds:.0f} s, untimed)" if warm_seconds else "")
    )
    print(
        f"{len(chunks)} chunks, {total / 3600:.2f} h of audio (mean {total / len(chunks):.1f} s, "
        f"longest {longest:.1f} s); "
        f"{len(machines)} machines ({len(joined)} worked), speed {min(speeds):.2f}–"
        f"{max(speeds):.2f}× (mean {mean_speed:.2f}), start latency {min(latencies):.0f}–"
        f"{max(latencies):.0f} s (mean {statistics.mean(latencies):.0f}); time scale {k:g}"
    )
    print(
        f"{'makespan s':>10} {'ideal s':>8} {'vs ideal':>9} {'ideal+ramp s':>13} "
        f"{'vs ideal+ramp':>14} {'CLI wall s':>11} {'spent $':>8} {'fake billed $':>14} "
        f"{'budget $':>9} {'claims/chunk':>13}"
    )
    print(
        f"{makespan:>10.1f} {simple:>8.1f} {makespan / simple - 1:>+9.1%} {ramp:>13.1f} "
        f"{makespan / ramp - 1:>+14.1%} {wall:>11.1f} {spent:>8.3f} {billed:>14.3f} "
        f"{args.budget:>9.2f} {attempts / len(chunks):>13.3f}"
    )
    requests = dict(sorted(state["requests"].items()))
    refused = requests.pop("rate_limited", 0)
    left = sum(1 for m in state["machines"] if m["state"] not in ("destroyed", "stopped"))
    print(
        f"Fly API (list lag {args.list_lag:g} s): requests {requests}; 429 {refused} "
        f"{state.get('rate_limited', {})}; "
        f"machines on Fly {len(state['machines'])}, at once {state['max_concurrent_started']} "
        f"started / {state['max_concurrent_active']} active; left running {left}"
    )
    if args.link is not None:
        down, up, busy = (work / "link.txt").read_text().split()
        per_hour = int(down) / (total / 3600) / 1e6
        print(
            f"link {args.link:g} Mbit/s ({'uncapped' if not args.link else 'capped'}), chunks as "
            f"{args.chunk_format}: {int(down) / 1e6:.1f} MB down ({per_hour:.1f} MB per audio "
            f"hour), {int(up) / 1e6:.2f} MB up; busy {float(busy):.1f} s of the makespan"
        )
    # The tail: from the last claim (the queue empty) to the last result. A backup attempt
    # of each chunk still running then, on a machine of mean speed, could end the run no
    # sooner than the last claim + that chunk ÷ the mean speed.
    last_claim = max(c["claimed_at"] for c in chunks)
    running = [c for c in chunks if c["finished_at"] > last_claim]
    backup_end = max(last_claim + (c["end"] - c["start"]) / mean_speed for c in running)
    idle = {c["worker_id"] for c in chunks} - {c["worker_id"] for c in running}
    slow = [m for m in joined if profiles[m["id"]][0] < args.speed * k * (1 - 0.2) - 1e-9]
    print(
        f"tail: {end - last_claim:.1f} s from the last claim to the last result, "
        f"{len(running)} chunks running then, {len(idle)} machines that had worked idle; "
        f"backups could end it at best {end - backup_end:.1f} s sooner "
        f"({(end - backup_end) / makespan:.1%} of the makespan); "
        f"slow machines that worked: {len(slow)} (--slow {args.slow:g})"
    )
    # What the machines' workers logged (WARNING and up): the losers of backup races.
    logs = [path.read_text(errors="replace") for path in (work / "machines").glob("*")]
    lost = sum(log.count("lease lost to another worker") for log in logs)
    refused = sum(log.count("another attempt owns it now") for log in logs)
    print(
        f"backups {'on' if args.backups else 'off'}: {lost} attempts stopped when another "
        f"won, {refused} results refused as late"
    )
    print(
        f"(last create or pool start at {max(m['created_at'] for m in machines) - t0:.0f} s;"
        f" work in {work})"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
