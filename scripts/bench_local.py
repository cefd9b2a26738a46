"""Local speed and accuracy: whisperfarm against one faster-whisper pass.

Each contender runs as a whole process (start-up, model load, decoding and writing all
counted), several times; the table shows the median wall time, × realtime, the largest
resident set of any one process, and the word error rate against the reference text.

    python scripts/bench_local.py [--audio samples/episode.mp3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.evaluation import word_error_rate  # noqa: E402
from whisperfarm.media import check_input  # noqa: E402


@dataclass
class Measured:
    name: str
    walls: list[float]
    peak_mb: float
    wer: float


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the largest process it started)."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        raise SystemExit(f"{command[:4]} failed:\n{process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=REPO / "samples" / "episode.mp3")
    parser.add_argument("--reference", type=Path, help="default: AUDIO with .txt")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--contenders",
        default="farm-1,farm-2,single,batched",
        help="comma list of farm-N (N local workers), single, batched",
    )
    args = parser.parse_args()
    reference = (args.reference or args.audio.with_suffix(".txt")).read_text()
    duration = check_input(args.audio).duration or 0.0
    python = sys.executable
    results: list[Measured] = []
    for contender in args.contenders.split(","):
        walls, peaks, text = [], [], ""
        for _ in range(args.repeat):
            work = Path(tempfile.mkdtemp(prefix="wf-bench-"))
            env = {**os.environ, "WHISPERFARM_HOME": str(work / "home")}
            out = work / "out.txt"
            if contender.startswith("farm-"):
                workers = int(contender.split("-")[1])
                command = [
                    python,
                    "-m",
                    "whisperfarm",
                    "transcribe",
                    str(args.audio),
                    "--model",
                    args.model,
                    "--workers",
                    str(workers),
                    "--threads",
                    str(max(1, args.cores // workers)),
                    "--format",
                    "txt",
                    "--out",
                    str(work),
                    "--quiet",
                ]
                out = work / f"{args.audio.stem}.txt"
            else:
                command = [
                    python,
                    str(REPO / "scripts" / "single_pass.py"),
                    str(args.audio),
                    "--model",
                    args.model,
                    "--threads",
                    str(args.cores),
                    "--out",
                    str(out),
                ]
                if contender == "batched":
                    command.append("--batched")
            wall, peak = run(command, env)
            walls.append(wall)
            peaks.append(peak)
            text = out.read_text()
            shutil.rmtree(work, ignore_errors=True)
        results.append(Measured(contender, walls, max(peaks), word_error_rate(reference, text)))
        print(f"  {contender}: {', '.join(f'{w:.1f}s' for w in walls)}", file=sys.stderr)

    baseline = next((r for r in results if r.name == "single"), None)
    print(
        f"\n{args.audio.name}: {duration:.0f}s of audio, model {args.model}, "
        f"{args.cores} cores, median of {args.repeat}"
    )
    print(
        f"{'contender':<10} {'wall s':>8} {'× realtime':>11} {'vs single':>10} "
        f"{'peak MB':>8} {'WER %':>7}"
    )
    for r in results:
        wall = statistics.median(r.walls)
        ratio = f"{wall / statistics.median(baseline.walls):.2f}×" if baseline else "-"
        print(
            f"{r.name:<10} {wall:>8.1f} {duration / wall:>11.1f} {ratio:>10} "
            f"{r.peak_mb:>8.0f} {r.wer * 100:>7.2f}"
        )


if __name__ == "__main__":
    main()
