"""Large inputs: a 3-hour episode through chunking and the coordinator.

The episode is the sample looped with ffmpeg's ``-stream_loop`` (stream copy, in .bench/).
Reported:
  chunking   wall time of registering, decoding, cutting and queueing every chunk (the
             work ``whisperfarm transcribe`` does in its ingest thread, here alone in a child
             process), that process's peak RSS and ffmpeg's;
  ledger     the ledger's size (with its WAL) and the chunk audio on disk;
  serving    the coordinator (scripts/bench_coordinator.py's server process, the real app)
             serving every chunk to 8 clients that claim, fetch the audio and post a
             result: its resident memory idle, at its peak and at the end, and how long the
             status page's snapshot (/v1/status) takes over the whole episode.

    python scripts/bench_large.py [--hours 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_coordinator  # noqa: E402

from whisperfarm.media import ffmpeg_exe  # noqa: E402

SAMPLE = REPO / "samples" / "episode.mp3"


def long_episode(hours: float) -> Path:
    path = REPO / ".bench" / f"episode-{hours:g}h.mp3"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        subprocess.run(
            [
                *(ffmpeg_exe(), "-y", "-loglevel", "error"),
                *("-stream_loop", "-1", "-i", str(SAMPLE), "-t", f"{hours * 3600:g}"),
                *("-c", "copy", str(path)),
            ],
            check=True,
        )
    return path


def chunk_only(home: Path, audio: Path, result: Path) -> None:
    """In this process: register the episode and cut it, as the farm's ingest does."""
    from whisperfarm.chunking import CutterConfig
    from whisperfarm.ingest import EpisodeRequest, chunk_episode, register
    from whisperfarm.ledger import Ledger
    from whisperfarm.media import check_input
    from worker.audio import ChunkFormat

    started = time.monotonic()
    ledger = Ledger(home / "ledger.db")
    options = {"language": "en", "beam_size": 5, "word_timestamps": False}
    request = EpisodeRequest(audio, check_input(audio), "tiny.en", options)
    episode_id, _ = register(ledger, request)
    chunks = chunk_episode(
        ledger,
        episode_id,
        request,
        chunks_dir=home / "episodes" / episode_id / "chunks",
        config=CutterConfig(),
        # WAV, as the README's figures were measured; `scripts/bench audio --cut-only
        # --files 1h` measures the cut in each chunk format.
        chunk_format=ChunkFormat.WAV,
    )
    ledger.close()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ffmpeg = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.write_text(
        json.dumps(
            {
                "episode": episode_id,
                "chunks": chunks,
                "seconds": time.monotonic() - started,
                "rss_mb": own,
                "ffmpeg_rss_mb": ffmpeg,
            }
        )
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


async def status_seconds(port: int, repeat: int = 5) -> float:
    conn = await bench_coordinator.Connection.open(port)
    times = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            status, body = await conn.request("GET", "/v1/status")
            times.append(time.perf_counter() - started)
            bench_coordinator.check(status, body, "status")
    finally:
        conn.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--chunk-only", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_only:
        chunk_only(*args.chunk_only)
        return
    audio = long_episode(args.hours)
    work = Path(tempfile.mkdtemp(prefix="large-", dir=REPO / ".bench"))
    try:
        home = work / "home"
        report = work / "chunking.json"
        started = time.monotonic()
        subprocess.run(
            [sys.executable, __file__, "--chunk-only", str(home), str(audio), str(report)],
            check=True,
        )
        wall = time.monotonic() - started
        chunking = json.loads(report.read_text())
        ledger_mb = sum(p.stat().st_size for p in home.glob("ledger.db*")) / 1e6
        audio_mb = size_mb(home / "episodes")

        ready = work / "port"
        server = subprocess.Popen(
            [
                *(sys.executable, str(REPO / "scripts" / "bench_coordinator.py")),
                *("--serve", str(home), "--ready", str(ready), "--episode", chunking["episode"]),
            ]
        )
        try:
            while not ready.exists() or not ready.read_text():
                if server.poll() is not None:
                    raise SystemExit("the coordinator did not start")
                time.sleep(0.05)
            port = int(ready.read_text())
            idle = rss_mb(server.pid)
            status_before = asyncio.run(status_seconds(port))
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.05):
                    peak = max(peak, rss_mb(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            stats = asyncio.run(bench_coordinator.drive(port, args.clients, server.pid))
            done.set()
            sampler.join()
            status_after = asyncio.run(status_seconds(port))
            end = rss_mb(server.pid)
            high_water = bench_coordinator.peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        if stats.cycles != chunking["chunks"]:
            raise SystemExit(f"served {stats.cycles} of {chunking['chunks']} chunks")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{audio.name}: {args.hours:g} h ({audio.stat().st_size / 1e6:.0f} MB mp3), "
        f"{chunking['chunks']} chunks, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"chunking: {chunking['seconds']:.1f} s ({args.hours * 3600 / chunking['seconds']:.0f}× "
        f"realtime; {wall:.1f} s with the process's start), peak RSS {chunking['rss_mb']:.0f} MB "
        f"(ffmpeg {chunking['ffmpeg_rss_mb']:.0f} MB)"
    )
    print(f"ledger: {ledger_mb:.2f} MB (with WAL); chunk audio: {audio_mb:.0f} MB")
    print(
        f"coordinator RSS: {idle:.0f} MB idle, {max(peak, high_water):.0f} MB peak, "
        f"{end:.0f} MB after serving every chunk to {args.clients} clients "
        f"({stats.cycles / stats.seconds:.0f} cycles/s); /v1/status snapshot "
        f"{status_before * 1000:.0f} ms queued, {status_after * 1000:.0f} ms all done"
    )


if __name__ == "__main__":
    main()
