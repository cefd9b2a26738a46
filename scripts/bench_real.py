"""Real recordings: accuracy, words in stretches nobody speaks, timeline and loops.

The files come from scripts/make_real.py (real recordings from faster-whisper's and
speechbrain's tests, in samples/real/, strung together; and a generated "hard podcast"
with music, a jingle, speech over a music bed and 75 s of street ambience), each with its
reference text and the times of its stretches without speech. Every contender runs as a
whole process with word timestamps, model tiny.en, int8, beam 5:

    farm        `whisperfarm transcribe --words --format all`, 2 local workers × 1 thread
    single      one faster-whisper pass over the whole file (scripts/single_pass.py)
    single-vad  the same with faster-whisper's vad_filter=True (Silero VAD)
    batched     faster-whisper's BatchedInferencePipeline (batch 8; it runs Silero VAD)

Columns:

    WER %       word error rate against the reference (whisperfarm.evaluation: lower
                case, no punctuation)
    nonspeech   words whose middle lies in a stretch with nobody talking (music intro and
                outro, jingles, street ambience; 0.25 s margin at each edge)
    timeline    segments, words and cues that break 0 ≤ start ≤ end ≤ duration or whose
                start goes backwards; for the farm in every file it writes (json segments
                and words, srt, vtt, tsv), for the others in their segments and words
    loops       the same 1-4 words 4 or more times in a row
    wall s      the process's wall time (start-up and model load included; this shared
                machine's load moves it, the other columns don't depend on load)

With ``--repeat N``: the median WER and wall time, and the worst run's counts (WER can
move between runs: Whisper's temperature fallback samples).

    python scripts/bench_real.py [--sets jfk,sentences,podcast] [--contenders farm,single]
    python scripts/bench_real.py --repeat 3     # medians of 3 runs (Whisper's fallback samples)
    python scripts/bench_real.py -v             # and the words placed in non-speech
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.evaluation import (  # noqa: E402
    cue_spans,
    repetition_loops,
    timeline_violations,
    tsv_spans,
    word_error_rate,
    words_within,
)

BENCH = REPO / ".bench" / "real"
WORKDIR = REPO / ".bench" / "tmp"
CONTENDERS = ("farm", "single", "single-vad", "batched")
MODEL = "tiny.en"


@dataclass
class Row:
    contender: str
    walls: list[float] = field(default_factory=list)
    wers: list[float] = field(default_factory=list)
    nonspeech: int = 0  # the worst run's, as are timeline and loops
    timeline: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    strays: list[str] = field(default_factory=list)


def command_for(contender: str, audio: Path, work: Path) -> list[str]:
    python = sys.executable
    if contender == "farm":
        return [
            *(python, "-m", "whisperfarm", "transcribe", str(audio)),
            *("--model", MODEL, "--workers", "2", "--threads", "1"),
            *("--words", "--format", "all", "--out", str(work), "--quiet"),
        ]
    command = [
        *(python, str(REPO / "scripts" / "single_pass.py"), str(audio)),
        *("--model", MODEL, "--threads", "2"),
        *("--out", str(work / "out.txt"), "--words", str(work / "out.json")),
    ]
    if contender == "single-vad":
        command.append("--vad")
    elif contender == "batched":
        command.append("--batched")
    elif contender != "single":
        raise SystemExit(f"unknown contender {contender!r}: use {', '.join(CONTENDERS)}")
    return command


def outputs(contender: str, audio: Path, work: Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(plain text, json document with segments and words, other formats by name)."""
    if contender == "farm":
        stem = work / audio.stem
        others = {
            name: stem.with_suffix(f".{name}").read_text("utf-8") for name in ("srt", "vtt", "tsv")
        }
        document = json.loads(stem.with_suffix(".json").read_text("utf-8"))
        return stem.with_suffix(".txt").read_text("utf-8"), document, others
    document = json.loads((work / "out.json").read_text("utf-8"))
    return (work / "out.txt").read_text("utf-8"), document, {}


def measure(
    row: Row, truth: dict[str, Any], text: str, document: dict[str, Any], others: dict[str, str]
) -> None:
    duration = float(truth["duration"])
    segments = document["segments"]
    words = [w for s in segments for w in s.get("words") or []]
    spans = {
        "json segments": [(float(s["start"]), float(s["end"])) for s in segments],
        "json words": [(float(w["start"]), float(w["end"])) for w in words],
        **{name: cue_spans(body) for name, body in others.items() if name in ("srt", "vtt")},
        **{name: tsv_spans(body) for name, body in others.items() if name == "tsv"},
    }
    for name, found in spans.items():
        row.timeline[name] = max(row.timeline.get(name, 0), timeline_violations(found, duration))
    stretches = [(float(s["start"]), float(s["end"])) for s in truth["nonspeech"]]
    placed = words_within([(float(w["start"]), float(w["end"])) for w in words], stretches)
    row.nonspeech = max(row.nonspeech, placed)
    row.strays += [
        f"{w['word'].strip()!r}@{w['start']:.1f}"
        for w in words
        if words_within([(float(w["start"]), float(w["end"]))], stretches)
    ]
    row.wers.append(word_error_rate(truth["reference"], text))
    row.loops = max(row.loops, repetition_loops(text))


def bench(audio: Path, contenders: list[str], repeat: int, verbose: bool) -> list[Row]:
    truth = json.loads(audio.with_suffix(".truth.json").read_text("utf-8"))
    rows = {name: Row(name) for name in contenders}
    WORKDIR.mkdir(parents=True, exist_ok=True)
    for round_ in range(repeat):
        for contender in contenders:
            work = Path(tempfile.mkdtemp(prefix="real-", dir=WORKDIR))
            try:
                env = {**os.environ, "WHISPERFARM_HOME": str(work / "home")}
                started = time.monotonic()
                done = subprocess.run(
                    command_for(contender, audio, work), env=env, capture_output=True, text=True
                )
                wall = time.monotonic() - started
                if done.returncode != 0:
                    raise SystemExit(f"{contender} failed on {audio.name}:\n{done.stderr[-2000:]}")
                row = rows[contender]
                row.walls.append(wall)
                measure(row, truth, *outputs(contender, audio, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"  {audio.name} round {round_ + 1}: {contender} {wall:.1f}s", file=sys.stderr)
    print(
        f"\n{audio.stem}: {truth['duration']:.1f} s, {len(truth['speech'])} spoken clips, "
        f"{sum(s['end'] - s['start'] for s in truth['nonspeech']):.0f} s without speech in "
        f"{len(truth['nonspeech'])} stretches; {MODEL}, int8, beam 5, word timestamps; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'contender':<11} {'WER %':>6} {'nonspeech':>9} {'timeline':>8} {'loops':>5} "
        f"{'wall s':>7}  where"
    )
    for row in rows.values():
        broken = ", ".join(f"{name} {n}" for name, n in row.timeline.items() if n)
        walls = ", ".join(f"{w:.1f}" for w in row.walls)
        wers = ", ".join(f"{w * 100:.2f}" for w in row.wers)
        print(
            f"{row.contender:<11} {statistics.median(row.wers) * 100:>6.2f} {row.nonspeech:>9} "
            f"{sum(row.timeline.values()):>8} {row.loops:>5} {statistics.median(row.walls):>7.1f}  "
            f"{broken or '-'}" + (f" (walls {walls}; WER {wers})" if len(row.walls) > 1 else "")
        )
        if verbose and row.strays:
            print(f"{'':<11} in non-speech: {' '.join(row.strays)}")
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="jfk,sentences,podcast")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per contender (WER, wall: median)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list words in non-speech")
    args = parser.parse_args()
    sets = args.sets.split(",")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_real.py"),
            "--out",
            str(BENCH),
            "--sets",
            ",".join(sets),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for name in sets:
        bench(BENCH / f"{name}.wav", args.contenders.split(","), args.repeat, args.verbose)


if __name__ == "__main__":
    main()
