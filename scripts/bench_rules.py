"""What each hallucination rule (whisperfarm/hallucinations.py) gains or costs.

Each file is transcribed once by the farm (`whisperfarm transcribe --words`, tiny.en,
2 local workers × 1 thread); its stored chunk results are then stitched again with no
rule, with each rule alone, and with all of them (`RULES`), so every row judges the same
decoding. Default files: the real-audio sets of scripts/make_real.py (jfk, sentences,
podcast, with reference text and stretches without speech) and two real recordings of
samples/real without a reference (multilingual.mp3, radio-tail.flac).

Columns: WER % against the reference (`-` without one); words (a rule that drops real
speech shows here first); nonspeech: words whose middle lies in a stretch nobody speaks
in; timeline: segments and words that break 0 ≤ start ≤ end ≤ duration or go backwards,
plus words outside their segment; loops: the same 1-4 words 4+ times in a row.

    python scripts/bench_rules.py [--sets jfk,sentences,podcast] [FILE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm import hallucinations  # noqa: E402
from whisperfarm.assembly import assemble  # noqa: E402
from whisperfarm.evaluation import (  # noqa: E402
    repetition_loops,
    timeline_violations,
    word_error_rate,
    words_within,
)
from whisperfarm.ledger import Ledger  # noqa: E402

BENCH = REPO / ".bench" / "real"
RECORDINGS = [REPO / "samples" / "real" / "multilingual.mp3", REPO / "samples/real/radio-tail.flac"]


def variants() -> dict[str, tuple[hallucinations.Rule, ...]]:
    rules = tuple(hallucinations.RULES)
    return {"no rule": (), **{rule.__name__: (rule,) for rule in rules}, "all (RULES)": rules}


def measure(audio: Path, reference: str | None, nonspeech: list[tuple[float, float]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        command = [sys.executable, "-m", "whisperfarm", "transcribe", str(audio), "--words"]
        options = ["--model", "tiny.en", "--workers", "2", "--out", str(home / "out")]
        subprocess.run(
            [*command, *options, "--format", "json"],
            env={**os.environ, "WHISPERFARM_HOME": str(home)},
            check=True,
            capture_output=True,
        )
        ledger = Ledger(home / "ledger.db")
        (episode,) = ledger.episodes()
        duration = episode["duration"]
        print(f"\n{audio.name}: {duration:.1f} s")
        print(
            f"{'rules':<22} {'WER %':>6} {'words':>6} {'nonspeech':>9} {'timeline':>8} {'loops':>5}"
        )
        saved = hallucinations.RULES
        try:
            for name, rules in variants().items():
                hallucinations.RULES = rules
                transcript = assemble(ledger, episode, keep_words=True)
                segments = transcript.segments
                words = [(w.start, w.end) for s in segments for w in s.words or []]
                outside = sum(
                    1
                    for s in segments
                    for w in s.words or []
                    if not s.start <= w.start <= w.end <= s.end
                )
                broken = (
                    timeline_violations([(s.start, s.end) for s in segments], duration)
                    + timeline_violations(words, duration)
                    + outside
                )
                wer = (
                    f"{100 * word_error_rate(reference, transcript.text):.2f}" if reference else "-"
                )
                stray = words_within(words, nonspeech) if nonspeech else "-"
                print(
                    f"{name:<22} {wer:>6} {len(words):>6} {stray:>9} {broken:>8} "
                    f"{repetition_loops(transcript.text):>5}"
                )
        finally:
            hallucinations.RULES = saved
            ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="jfk,sentences,podcast")
    parser.add_argument("files", nargs="*", type=Path, default=RECORDINGS)
    args = parser.parse_args()
    sets = [name for name in args.sets.split(",") if name]
    if sets:
        make = [sys.executable, str(REPO / "scripts/make_real.py"), "--out", str(BENCH)]
        subprocess.run(
            [*make, "--sets", ",".join(sets)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    for name in sets:
        truth = json.loads((BENCH / f"{name}.truth.json").read_text(encoding="utf-8"))
        stretches = [(s["start"], s["end"]) for s in truth["nonspeech"]]
        measure(BENCH / f"{name}.wav", truth["reference"], stretches)
    for audio in args.files:
        measure(audio, None, [])


if __name__ == "__main__":
    main()
