"""Coordinator throughput: workers that transcribe nothing, against a real coordinator.

A ledger gets one episode of ``--chunks`` tiny chunks (short WAV files), queued through the
ledger's own methods. A separate process serves it with the real app and server
(``whisperfarm.coordinator.create_app`` on ``whisperfarm.server.BackgroundServer``, as
``whisperfarm transcribe`` does). This process then runs ``--clients`` concurrent clients,
each on its own keep-alive connection, doing claim → audio → result cycles until the queue
is empty. The clients speak HTTP/1.1 directly over asyncio streams, so that on a small
machine they cost little next to the server. Reported: cycles/s, claim latency (p50,
p99), and the CPU the server spent per cycle (steadier than cycles/s on a shared machine).

    python scripts/bench_coordinator.py [--chunks 3000] [--clients 32] [--repeat 3]
                                        [--chunk-seconds 25] [--chunk-format opus]
                                        [--batch 4]

``--batch N``: each client claims up to N jobs at once (``max_jobs``, as a worker with
``--batch-size N``), fetches each one's audio and posts each one's result; a cycle is
still one job's claim share, audio and result. The claim latency is per claim.

``--chunk-format`` serves the chunks as WAV (default), FLAC or Opus (the first is encoded
with the CLI's own writer, the rest are copies of it, before the clock starts).

``--profile`` samples the server once with py-spy (``pip install py-spy``; unlike cProfile
it sees every thread: it samples whichever holds the GIL) and prints the functions it spent
most time in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.chunk_audio import chunk_path, write_chunk  # noqa: E402
from whisperfarm.ledger import ChunkPlan, Ledger  # noqa: E402
from worker.audio import ChunkFormat  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
EPISODE = "bench"
RESULT = {
    "segments": [
        {"start": 0.0, "end": 4.2, "text": " Hello and welcome back to our little show.", "avg_logprob": -0.21, "no_speech_prob": 0.01},  # noqa: E501
        {"start": 4.6, "end": 9.8, "text": " Today we talk about the weather, and tea.", "avg_logprob": -0.18, "no_speech_prob": 0.02},  # noqa: E501
    ],
    "language": "en",
    "duration": 10.0,
    "model": "tiny.en",
    "elapsed": 0.5,
}  # fmt: skip


def build_ledger(
    home: Path, chunks: int, seconds: float, chunk_format: ChunkFormat = ChunkFormat.WAV
) -> int:
    """One queued episode of ``chunks`` chunks of ``seconds`` each, through the ledger; the
    bytes of one chunk's file."""
    ledger = Ledger(home / "ledger.db")
    try:
        ledger.create_episode(
            episode_id=EPISODE,
            name=EPISODE,
            source="/bench/episode.mp3",
            content_hash="bench",
            model="tiny.en",
            options={"language": "en", "beam_size": 5, "word_timestamps": False},
        )
        samples = (np.sin(np.arange(int(seconds * 16_000)) / 7.0) * 3000).astype(np.int16)
        chunks_dir = home / "episodes" / EPISODE / "chunks"
        first = chunk_path(chunks_dir, 0, chunk_format)
        write_chunk(first, samples, chunk_format)  # encoded once: every chunk is the same
        for idx in range(chunks):
            path = chunk_path(chunks_dir, idx, chunk_format)
            if idx:
                shutil.copyfile(first, path)
            start = idx * seconds
            plan = ChunkPlan(idx, start, start + seconds, start, start + seconds)
            ledger.add_chunk(EPISODE, plan, str(path))
        ledger.finish_chunking(EPISODE, duration=chunks * seconds, chunk_count=chunks)
    finally:
        ledger.close()
    return first.stat().st_size


# The server process ----------------------------------------------------------------------


def serve(home: Path, ready: Path, episode: str = EPISODE) -> None:
    """Serve the episode's chunks as ``whisperfarm transcribe`` does, until SIGTERM; write
    the port to ``ready`` once listening."""
    from whisperfarm.coordinator import create_app
    from whisperfarm.coordinator_config import CoordinatorConfig
    from whisperfarm.server import BackgroundServer, bind

    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: [episode],
        episodes_dir=home / "episodes",
    )
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    server = BackgroundServer(create_app(config), bind("127.0.0.1", 0))
    server.start()
    ready.write_text(str(server.port))
    while not stopping:
        time.sleep(0.05)
    server.stop()
    config.close()


# The clients ---------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {TOKEN}",
            f"Content-Length: {len(body)}",
        ]
        if body:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"no Content-Length in {head!r}")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Stats:
    cycles: int
    seconds: float
    claim_latencies: list[float]
    server_cpu: float  # seconds of CPU the server process used during the run
    client_cpu: float  # ... and this process, the clients


def check(status: int, body: bytes, what: str) -> None:
    if status != 200:
        raise RuntimeError(f"{what}: {status} {body[:300]!r}")


async def client(port: int, n: int, latencies: list[float], batch: int = 1) -> int:
    """Claim → audio → result until done; with ``batch`` > 1 each claim asks for that many
    jobs (as a batching worker does), and each job's audio and result follow."""
    conn = await Connection.open(port)
    claim: dict[str, object] = {"worker": {"id": f"bench-{n}", "kind": "remote"}}
    if batch > 1:
        claim["max_jobs"] = batch
    claim_body = json.dumps(claim).encode()
    cycles = 0
    try:
        while True:
            started = time.perf_counter()
            status, body = await conn.request("POST", "/v1/claim", claim_body)
            latencies.append(time.perf_counter() - started)
            check(status, body, "claim")
            reply = json.loads(body)
            if reply["status"] == "done":
                return cycles
            if reply["status"] == "wait":
                await asyncio.sleep(0.01)
                continue
            jobs = [reply["job"], *reply.get("more_jobs", [])]
            for job in jobs:
                status, audio = await conn.request(
                    "GET", job["audio_url"], headers={"X-Lease-Token": job["lease_token"]}
                )
                check(status, audio, "audio")
            for job in jobs:
                result = json.dumps(
                    {"lease_token": job["lease_token"], "result": RESULT, "busy_seconds": 0.5}
                ).encode()
                path = f"/v1/jobs/{job['chunk_id']}/result"
                status, body = await conn.request("POST", path, result)
                check(status, body, "result")
                cycles += 1
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def drive(port: int, clients: int, pid: int, batch: int = 1) -> Stats:
    latencies: list[float] = []
    cpu_before, own_before = cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    cycles = await asyncio.gather(*(client(port, n, latencies, batch) for n in range(clients)))
    seconds = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(pid) - cpu_before, time.process_time() - own_before
    return Stats(sum(cycles), seconds, latencies, server_cpu, client_cpu)


def run_once(args: argparse.Namespace, profile: Path | None = None) -> tuple[Stats, float]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coordinator-", dir=args.workdir) as tmp:
        home = Path(tmp) / "home"
        args.chunk_bytes = build_ledger(
            home, args.chunks, args.chunk_seconds, ChunkFormat(args.chunk_format)
        )
        ready = Path(tmp) / "port"
        command = [sys.executable, __file__, "--serve", str(home), "--ready", str(ready)]
        server = subprocess.Popen(command)
        spy = None
        try:
            deadline = time.monotonic() + 30
            while not ready.exists() or not ready.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the coordinator did not start")
                time.sleep(0.05)
            if profile is not None:
                spy_exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                spy = subprocess.Popen(
                    [
                        *(spy_exe, "record", "--pid", str(server.pid), "--gil"),
                        *("--format", "raw", "--rate", "100", "--output", str(profile)),
                    ],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # let it attach
            stats = asyncio.run(drive(int(ready.read_text()), args.clients, server.pid, args.batch))
            rss = peak_rss_mb(server.pid)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        if stats.cycles != args.chunks:
            raise SystemExit(f"{stats.cycles} cycles for {args.chunks} chunks")
        done = Ledger(home / "ledger.db")
        try:
            states = {c["state"] for c in done.chunks(EPISODE)}
        finally:
            done.close()
        if states != {"done"}:
            raise SystemExit(f"chunk states after the run: {states}")
    return stats, rss


def print_profile(path: Path, top: int = 30) -> None:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        if "idle" in stack or frames[-1].startswith(("select ", "epoll_wait", "wait ")):
            continue  # waiting, not working
        samples += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    print(f"{samples} busy samples; self % / inclusive %")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  self {100 * n / samples:5.1f}%  {name}")
    for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  incl {100 * n / samples:5.1f}%  {name}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--chunk-seconds", type=float, default=0.5, help="audio per chunk")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--chunk-format",
        choices=[f.value for f in ChunkFormat],
        default="wav",
        help="what the chunks are served as (encoded once, before the clock starts)",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="jobs each claim asks for (max_jobs), as --batch-size"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / ".bench" / "tmp",
        help="where the ledger and chunks go (default: .bench/tmp; on some machines creating "
        "files in /tmp is far slower than in a home directory)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server once")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--episode", default=EPISODE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ready, args.episode)
        return
    if args.profile:
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="profile-", dir=args.workdir)) / "server.txt"
        stats, _ = run_once(args, out)
        print(f"{stats.cycles / stats.seconds:.0f} cycles/s under py-spy; stacks in {out}")
        print_profile(out)
        return

    runs = []
    for n in range(args.repeat):
        stats, rss = run_once(args)
        runs.append((stats, rss))
        print(
            f"  run {n + 1}: {stats.cycles / stats.seconds:.0f} cycles/s, "
            f"claim p50 {percentile(stats.claim_latencies, 50) * 1000:.1f} ms, "
            f"p99 {percentile(stats.claim_latencies, 99) * 1000:.1f} ms, CPU per cycle: server "
            f"{stats.server_cpu / stats.cycles * 1000:.2f} ms, clients "
            f"{stats.client_cpu / stats.cycles * 1000:.2f} ms",
            file=sys.stderr,
        )
    rates = [s.cycles / s.seconds for s, _ in runs]
    best = sorted(runs, key=lambda r: r[0].cycles / r[0].seconds)[len(runs) // 2][0]
    print(
        f"\n{args.chunks} {args.chunk_format} chunks of {args.chunk_seconds:g} s "
        f"({args.chunk_bytes:,} bytes each), {args.clients} clients, "
        f"{os.cpu_count()} cores, median of {args.repeat} (runs: "
        f"{', '.join(f'{r:.0f}' for r in rates)} cycles/s)"
    )
    print(
        f"{'cycles/s':>9} {'claim p50 ms':>13} {'claim p99 ms':>13} "
        f"{'server CPU ms/cycle':>20} {'client CPU ms/cycle':>20} {'server peak MB':>15}"
    )
    print(
        f"{statistics.median(rates):>9.0f} "
        f"{percentile(best.claim_latencies, 50) * 1000:>13.1f} "
        f"{percentile(best.claim_latencies, 99) * 1000:>13.1f} "
        f"{statistics.median(s.server_cpu / s.cycles for s, _ in runs) * 1000:>20.2f} "
        f"{statistics.median(s.client_cpu / s.cycles for s, _ in runs) * 1000:>20.2f} "
        f"{max(r for _, r in runs):>15.0f}"
    )


if __name__ == "__main__":
    main()
