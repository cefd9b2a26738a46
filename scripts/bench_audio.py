"""Chunk audio formats: bytes sent to workers per audio hour, the cut's wall time, and WER,
for WAV, FLAC and Opus (the ``chunk_format`` setting), on every benchmark file.

Files: the sample episode (samples/episode.mp3), the 20-minute generated episode
(.bench/episode-20min.mp3, made by ``scripts/bench local --long``; skipped with a note if
absent) and the real recordings (.bench/real/{jfk,sentences,podcast}.wav, made by
scripts/make_real.py). Two measurements per file and format:

    cut s/h   the CLI's critical path before workers start, in-process: decode, cut (with
              the speech model) and write every chunk in the format through the writer's
              thread pool, as ``whisperfarm transcribe`` does; wall seconds per audio hour
    cut CPU   the same cut's CPU seconds (the process and its ffmpeg children) per audio
              hour: what it takes from workers on the same machine, whatever the load
    enc s/h   encoding alone, one chunk after another on one thread: seconds per audio hour
    MB/h      bytes of the chunks sent to workers (those with speech), per audio hour: the
              files the cut above wrote, checked to be the run's own chunks (a run
              deletes its chunk audio once the episode is done)
    WER %     a whole ``whisperfarm transcribe`` run (tiny.en, int8, beam 5, 2 local
              workers × 1 thread, real processes) with WHISPERFARM_CHUNK_FORMAT set;
              ``--repeat N`` gives the median (Whisper's temperature fallback samples)
    ΔWER      against the WAV run of the same file, in points

``--cut-only`` skips the transcribe runs (no WER; MB/h then counts every chunk written,
sent or not); with it, ``--files 1h`` measures the cut on an hour of the sample looped
(made in .bench/ as scripts/bench_large.py makes its long episode).

    python scripts/bench_audio.py [--files sample,20min,jfk,sentences,podcast]
                                  [--formats wav,flac,opus] [--repeat 1]
    python scripts/bench_audio.py --files 1h --cut-only
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.chunk_audio import ChunkWriter, chunk_path, write_chunk  # noqa: E402
from whisperfarm.chunking import CutterConfig, cut  # noqa: E402
from whisperfarm.evaluation import word_error_rate  # noqa: E402
from whisperfarm.ledger import ChunkPlan, Ledger  # noqa: E402
from whisperfarm.media import SAMPLE_RATE, Decoder  # noqa: E402
from worker.audio import ChunkFormat  # noqa: E402

BENCH = REPO / ".bench"
FILES = {
    "sample": REPO / "samples" / "episode.mp3",
    "20min": BENCH / "episode-20min.mp3",
    "jfk": BENCH / "real" / "jfk.wav",
    "sentences": BENCH / "real" / "sentences.wav",
    "podcast": BENCH / "real" / "podcast.wav",
    "1h": BENCH / "episode-1h.mp3",  # --cut-only: it has no reference text
}
MODEL = "tiny.en"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg's decoder, encoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Cut(NamedTuple):
    seconds: float  # of audio
    wall: float  # to decode, cut and write every chunk
    cpu: float
    plans: list[ChunkPlan]
    sizes: list[int]  # each chunk file's bytes, in plan order


def cut_and_write(audio: Path, chunk_format: ChunkFormat, out: Path) -> Cut:
    """Decode, cut and write every chunk as ``ingest.chunk_episode`` does, without the
    ledger."""
    started, cpu = time.perf_counter(), cpu_seconds()
    decoder = Decoder(audio)
    writer: ChunkWriter[tuple[ChunkPlan, Path]] = ChunkWriter(chunk_format)
    written: list[tuple[ChunkPlan, Path]] = []
    try:
        for plan, samples in cut(decoder.blocks(), CutterConfig()):
            path = chunk_path(out, plan.idx, chunk_format)
            written += writer.submit((plan, path), path, samples)
        written += writer.drain()
    finally:
        writer.close()
    decoder.close()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    sizes = [path.stat().st_size for _, path in written]
    return Cut(decoder.samples / SAMPLE_RATE, wall, cpu, [plan for plan, _ in written], sizes)


def encode_alone(audio: Path, chunk_format: ChunkFormat, out: Path) -> float:
    """Wall seconds to encode every chunk one after another (the cut done beforehand)."""
    decoder = Decoder(audio)
    chunks = list(cut(decoder.blocks(), CutterConfig()))
    decoder.close()
    started = time.perf_counter()
    for plan, samples in chunks:
        write_chunk(chunk_path(out, plan.idx, chunk_format), samples, chunk_format)
    return time.perf_counter() - started


def farm_run(audio: Path, chunk_format: ChunkFormat, work: Path, made: Cut) -> tuple[float, int]:
    """(WER %, bytes of the chunks sent to workers) of one whole transcribe run. The bytes
    are those of ``made``'s files (the run deletes its own), once the run's chunks are
    found to be ``made``'s: the same times, the same ones with speech."""
    home, out = work / "home", work / "out"
    env = os.environ | {
        "WHISPERFARM_HOME": str(home),
        "WHISPERFARM_CHUNK_FORMAT": str(chunk_format),
    }
    command = [
        *(sys.executable, "-m", "whisperfarm", "transcribe", str(audio)),
        *("--model", MODEL, "--workers", "2", "--threads", "1"),
        *("--format", "txt", "--out", str(out), "--quiet"),
    ]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    reference = audio.with_suffix(".txt").read_text("utf-8")
    text = (out / f"{audio.stem}.txt").read_text("utf-8")
    ledger = Ledger(home / "ledger.db")
    try:
        (episode,) = ledger.episodes()
        chunks = ledger.chunks(episode["id"])
        suffixes = {Path(c["audio_path"]).suffix for c in chunks}
        assert suffixes == {chunk_format.suffix}, f"chunks written as {suffixes}"
        ran = [(c["idx"], c["start"], c["end"], bool(c["speech"])) for c in chunks]
        mine = [(p.idx, p.start, p.end, p.speech) for p in made.plans]
        assert ran == mine, f"{audio.name}: the run cut other chunks than the bench's cut"
        size = sum(n for n, plan in zip(made.sizes, made.plans, strict=True) if plan.speech)
    finally:
        ledger.close()
    return 100 * word_error_rate(reference, text), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--formats", default="wav,flac,opus")
    parser.add_argument("--repeat", type=int, default=1, help="transcribe runs (WER: median)")
    parser.add_argument("--cut-only", action="store_true", help="no transcribe runs, no WER")
    args = parser.parse_args()
    names = args.files.split(",")
    if "1h" in names:
        if not args.cut_only:
            raise SystemExit("--files 1h needs --cut-only: the looped hour has no reference text")
        sys.path.insert(0, str(REPO / "scripts"))
        import bench_large

        FILES["1h"] = bench_large.long_episode(1)
    real = [name for name in names if FILES[name].parent == BENCH / "real"]
    if real:
        subprocess.run(
            [
                *(sys.executable, str(REPO / "scripts" / "make_real.py")),
                *("--out", str(BENCH / "real"), "--sets", ",".join(real)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    formats = [ChunkFormat(name) for name in args.formats.split(",")]
    print(
        f"{'file':<10} {'format':<6} {'audio s':>8} {'cut s/h':>8} {'cut CPU':>8} "
        f"{'enc s/h':>8} "
        f"{'MB/h':>7} {'WER %':>6} {'ΔWER':>6}"
    )
    for name in names:
        audio = FILES[name]
        if not audio.exists():
            print(f"{name:<10} skipped: {audio} is missing (scripts/bench local --long makes it)")
            continue
        base: float | None = None
        for chunk_format in formats:
            with tempfile.TemporaryDirectory(prefix="bench-audio-") as scratch:
                work = Path(scratch)
                done = cut_and_write(audio, chunk_format, work / "cut")
                seconds, cut_wall, cut_cpu = done.seconds, done.wall, done.cpu
                encode_wall = encode_alone(audio, chunk_format, work / "enc")
                wers, sizes = [], []
                if args.cut_only:
                    sizes.append(sum(done.sizes))
                for run in range(0 if args.cut_only else args.repeat):
                    wer, size = farm_run(audio, chunk_format, work / f"run{run}", done)
                    wers.append(wer)
                    sizes.append(size)
            per_hour = 3600 / seconds
            line = (
                f"{name:<10} {chunk_format:<6} {seconds:>8.1f} {cut_wall * per_hour:>8.1f} "
                f"{cut_cpu * per_hour:>8.1f} "
                f"{encode_wall * per_hour:>8.1f} {sizes[0] * per_hour / 1e6:>7.2f}"
            )
            if wers:
                wer = statistics.median(wers)
                base = wer if base is None else base
                line += f" {wer:>6.2f} {wer - base:>+6.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
