"""Subtitles: how readable the srt cues are, before and after whisperfarm.subtitles, and
what word timestamps cost to decode.

Transcribes the sample episode and the real-recording sets of scripts/make_real.py
(jfk, sentences, the hard podcast) plus samples/real/multilingual.mp3 with
`whisperfarm transcribe --model tiny.en --words --format json,srt` (2 local workers),
then measures three sets of cues:

    before      one cue per segment, one line: what the srt writer wrote before (read
                from the json's segments, which are exactly those)
    words       the srt written, cut and wrapped from word timings
    no words    the same transcript's srt with its word timings dropped: times shared
                out by characters, as a run without --words gets them

Columns: cues; % of cues with a line over 42 characters; the longest line; the most lines
in a cue; reading speed (characters, lines joined by a space, per second on screen) at
most and at the 95th percentile; the longest cue, in seconds.

With ``--words-cost N``: decodes the sample N times each without and with
word_timestamps (alternating, model loaded once, tiny.en int8, beam 5, 2 threads) and
prints the median decode times, wall and CPU.

    python scripts/bench_subtitles.py [--words-cost 3] [--keep DIR]
    python scripts/bench_subtitles.py --reuse DIR   # cues anew from DIR's json, no transcribing
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.evaluation import cue_spans  # noqa: E402
from whisperfarm.transcripts import load_json, to_srt  # noqa: E402

SAMPLE = REPO / "samples" / "episode.mp3"
WIDTH = 42


def cues_of(srt: str) -> list[tuple[float, float, list[str]]]:
    spans = cue_spans(srt)
    blocks = [block.splitlines()[2:] for block in srt.strip().split("\n\n") if block.strip()]
    return [(start, end, lines) for (start, end), lines in zip(spans, blocks, strict=True)]


def stats(cues: list[tuple[float, float, list[str]]]) -> dict[str, float]:
    speeds = sorted(
        len(" ".join(lines)) / (end - start) for start, end, lines in cues if end > start
    )
    return {
        "cues": len(cues),
        "over": 100 * sum(any(len(x) > WIDTH for x in lines) for _, _, lines in cues) / len(cues),
        "longest": max(len(x) for _, _, lines in cues for x in lines),
        "lines": max(len(lines) for _, _, lines in cues),
        "cps max": speeds[-1],
        "cps p95": speeds[min(len(speeds) - 1, round(0.95 * (len(speeds) - 1)))],
        "dur max": max(end - start for start, end, _ in cues),
    }


def transcribe(inputs: list[Path], work: Path) -> Path:
    out = work / "out"
    env = {**os.environ, "WHISPERFARM_HOME": str(work / "home")}
    command = [
        str(REPO / ".venv" / "bin" / "whisperfarm"),
        "transcribe",
        *map(str, inputs),
        "--model",
        "tiny.en",
        "--workers",
        "2",
        "--words",
        "--format",
        "json,srt",
        "--out",
        str(out),
        "--quiet",
    ]
    subprocess.run(command, env=env, check=True, timeout=1800)
    return out


def words_cost(repeat: int) -> None:
    from faster_whisper import decode_audio

    from worker.models import load_model

    model = load_model("tiny.en", threads=2, compute_type="int8")
    audio = decode_audio(str(SAMPLE), sampling_rate=16000)
    # Wall time moves with the machine's load; CPU time (this process, all its threads)
    # much less, so both are printed.
    times: dict[tuple[bool, str], list[float]] = {}
    for _ in range(repeat):
        for words in (False, True):
            wall, cpu = time.perf_counter(), time.process_time()
            segments, _ = model.transcribe(audio, language="en", beam_size=5, word_timestamps=words)
            list(segments)
            times.setdefault((words, "wall"), []).append(time.perf_counter() - wall)
            times.setdefault((words, "cpu"), []).append(time.process_time() - cpu)
    print(
        f"\ndecode of {SAMPLE.name} ({len(audio) / 16000:.0f} s), tiny.en int8 beam 5, "
        f"2 threads, median of {repeat} (runs in brackets), load average "
        f"{os.getloadavg()[0]:.1f} at the end:"
    )
    for kind in ("wall", "cpu"):
        plain = statistics.median(times[(False, kind)])
        timed = statistics.median(times[(True, kind)])
        runs = [[round(t, 1) for t in times[(words, kind)]] for words in (False, True)]
        print(
            f"  {kind:>4} s: without word timestamps {plain:6.2f} {runs[0]}, with "
            f"{timed:6.2f} {runs[1]}: {100 * (timed - plain) / plain:+.1f} %"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words-cost", type=int, default=0, metavar="N")
    parser.add_argument("--keep", type=Path, help="keep the transcripts in this directory")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="measure the transcripts --keep kept here: cues anew from their json (times "
        "rounded to the millisecond there), nothing transcribed",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-subtitles-"))
    try:
        real = work / "real"
        inputs = [
            SAMPLE,
            *(real / f"{name}.wav" for name in ("jfk", "sentences", "podcast")),
            REPO / "samples" / "real" / "multilingual.mp3",
        ]
        if args.reuse:
            out = args.reuse
        else:
            subprocess.run(
                [sys.executable, str(REPO / "scripts" / "make_real.py"), "--out", str(real)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            out = transcribe(inputs, work)
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
        rows: dict[str, dict[str, list[tuple[float, float, list[str]]]]] = {}
        for path in inputs:
            transcript = load_json(out / f"{path.stem}.json")
            before = [
                (s.start, s.end, [s.text.strip()]) for s in transcript.segments if s.text.strip()
            ]
            if args.reuse:
                words = cues_of(to_srt(transcript))
            else:
                words = cues_of((out / f"{path.stem}.srt").read_text(encoding="utf-8"))
            for segment in transcript.segments:
                segment.words = None
            no_words = cues_of(to_srt(transcript))
            rows[path.stem] = {"before": before, "words": words, "no words": no_words}
        columns = ("cues", "over", "longest", "lines", "cps max", "cps p95", "dur max")
        header = f"{'file':<12} {'cues from':<9} " + " ".join(f"{c:>8}" for c in columns)
        print(header.replace("    over", "  % > 42"))
        for kind in ("before", "words", "no words"):
            everything = [cue for cues in rows.values() for cue in cues[kind]]
            for name, cues in [*rows.items(), ("all", {kind: everything})]:
                row = stats(cues[kind])
                cells = [
                    f"{row['cues']:8.0f}",
                    f"{row['over']:8.1f}",
                    f"{row['longest']:8.0f}",
                    f"{row['lines']:8.0f}",
                    f"{row['cps max']:8.1f}",
                    f"{row['cps p95']:8.1f}",
                    f"{row['dur max']:8.2f}",
                ]
                print(f"{name:<12} {kind:<9} " + " ".join(cells))
            print()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.words_cost:
        words_cost(args.words_cost)


if __name__ == "__main__":
    main()
