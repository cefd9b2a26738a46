#!/usr/bin/env python3
"""Generate the sample podcast episode: speech audio (mp3) plus its reference transcript (.txt).

A two-host conversation (scripts/sample_script.txt) is read with the `hibari-tts` voice "heart"
(the only voice shipped inside the package); the hosts differ by speaking speed. Sentences are
trimmed of the model's own edge silence and joined with seeded pauses (0.25-0.8 s between
sentences, 0.7-1.5 s between turns), then a constant, seeded noise floor (about -55 dBFS) is laid
over everything so the pauses are quiet but not digital zero, like a real recording. The result is
encoded with the ffmpeg binary from the `imageio-ffmpeg` wheel (mono, 64 kbps mp3, 24 kHz), with
bit-exact flags, so the same command on the same machine gives a byte-identical file.

    python scripts/make_sample.py               # -> samples/episode.mp3 + samples/episode.txt
    python scripts/make_sample.py --minutes 30 --out .bench/episode-30min.mp3

--minutes N goes through the script repeatedly (the intro and outro stay in place, the topic
sections in between are shuffled, and speeds and pause patterns vary per pass, all derived from
--seed) until the episode is at least N minutes long. The reference transcript is written next to
the mp3 with the same name and a .txt suffix: one line per speaker turn, exactly the words spoken.

Needs: pip install hibari-tts imageio-ffmpeg numpy
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SCRIPT = HERE / "sample_script.txt"
DEFAULT_OUT = REPO / "samples" / "episode.mp3"
DEFAULT_SEED = 20240607
SAMPLE_RATE = 24000  # hibari's native rate; the mp3 keeps it
BITRATE = "64k"
VOICE = "heart"

# Speaking speed per host (hibari: 1.0 is the model's normal pace); the hosts differ slightly.
HOST_SPEED = {"A": 1.0, "B": 0.92}
SENTENCE_PAUSE = (0.25, 0.8)  # seconds of silence between sentences within a turn
TURN_PAUSE = (0.7, 1.5)  # seconds between speaker turns
LEAD_IN, TAIL = 0.6, 1.0  # silence at the very start and end of the episode
NOISE_DBFS = -55.0  # RMS of the constant noise floor
PEAK_DBFS = -1.0  # the speech is scaled so its highest peak sits here

# Trimming of the model's leading/trailing silence around each sentence.
TRIM_FRAME = 240  # 10 ms analysis frames
TRIM_DB_BELOW_PEAK = 45.0  # frames this far under the sentence's loudest frame count as silence
TRIM_FLOOR_DBFS = -60.0  # ... and anything under this always does
TRIM_KEEP_BEFORE, TRIM_KEEP_AFTER = 0.04, 0.08  # seconds kept around the speech
FADE = 0.005  # seconds of fade in/out at the trimmed edges

_TURN = re.compile(r"^\s*([AB])\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class Turn:
    host: str
    text: str


def parse_script(path: Path) -> list[list[Turn]]:
    """Sections of turns from the dialogue file ("A: ..." / "B: ..." lines, "---" separators)."""
    sections: list[list[Turn]] = [[]]
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "---":
            sections.append([])
            continue
        m = _TURN.match(line)
        if not m:
            raise SystemExit(f"{path}:{n}: expected 'A: text', 'B: text' or '---', got {raw!r}")
        if re.search(r"\d", m.group(2)):
            raise SystemExit(f"{path}:{n}: spell numbers out as words (no digits)")
        sections[-1].append(Turn(m.group(1), m.group(2)))
    sections = [s for s in sections if s]
    if not sections:
        raise SystemExit(f"{path}: no turns")
    return sections


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from the master seed and a position (pass, turn, sentence...)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class Job:
    text: str
    speed: float
    seed: int


@dataclass
class PassPlan:
    turns: list[Turn]
    sentences: list[list[Job]]  # per turn
    sentence_pauses: list[list[float]]  # per turn, one fewer than its sentences
    turn_pauses: list[float]  # pause before each turn (the first is unused)


def plan_pass(sections: list[list[Turn]], seed: int, index: int) -> PassPlan:
    """Turn order, speeds, per-sentence seeds and pauses for one pass through the script.

    Pass 0 is the script as written, with the base speeds and uniform pauses; later passes shuffle
    the middle sections, nudge each host's speed by up to +-6 % and shape the pause distribution
    differently (still inside the same ranges)."""
    from hibari import Hibari  # only the static sentence splitter; no model is loaded here

    rng = np.random.default_rng(derive_seed(seed, index, 0xA11CE))
    order = list(range(len(sections)))
    if index:
        middle = order[1:-1]  # the intro and outro stay in place
        rng.shuffle(middle)
        order = [order[0], *middle, order[-1]] if len(order) > 1 else order
    if index == 0:
        speeds = dict(HOST_SPEED)
        shape = [1.0, 1.0, 1.0, 1.0]  # beta(1, 1): uniform pauses
    else:
        speeds = {h: round(s * float(rng.uniform(0.94, 1.06)), 3) for h, s in HOST_SPEED.items()}
        shape = [float(x) for x in rng.uniform(0.8, 2.5, size=4)]

    def pause(lo_hi: tuple[float, float], a: float, b: float) -> float:
        lo, hi = lo_hi
        return round(lo + (hi - lo) * float(rng.beta(a, b)), 3)

    turns = [t for i in order for t in sections[i]]
    plan = PassPlan(turns, [], [], [])
    for ti, turn in enumerate(turns):
        sents = Hibari.split_sentences(turn.text)
        plan.sentences.append(
            [
                Job(s, speeds[turn.host], derive_seed(seed, index, ti, si))
                for si, s in enumerate(sents)
            ]
        )
        plan.sentence_pauses.append([pause(SENTENCE_PAUSE, shape[0], shape[1]) for _ in sents[1:]])
        plan.turn_pauses.append(pause(TURN_PAUSE, shape[2], shape[3]))
    return plan


# -- synthesis (in worker processes) ----------------------------------------------------------

_TTS = None


def _init_worker() -> None:
    global _TTS
    from hibari import Hibari

    _TTS = Hibari(voice=VOICE, threads=1)


def _synth(job: Job) -> np.ndarray:
    assert _TTS is not None
    return trim(np.asarray(_TTS(job.text, speed=job.speed, seed=job.seed), np.float32))


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut the model's leading/trailing near-silence, keeping a little margin, with short fades."""
    n = len(audio) // TRIM_FRAME
    if n == 0:
        return audio
    frames = audio[: n * TRIM_FRAME].reshape(n, TRIM_FRAME).astype(np.float64)
    db = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-20)
    thresh = max(float(db.max()) - TRIM_DB_BELOW_PEAK, TRIM_FLOOR_DBFS)
    active = np.nonzero(db > thresh)[0]
    if len(active) == 0:
        return audio[:0]
    start = max(0, active[0] * TRIM_FRAME - int(TRIM_KEEP_BEFORE * SAMPLE_RATE))
    end = min(len(audio), (active[-1] + 1) * TRIM_FRAME + int(TRIM_KEEP_AFTER * SAMPLE_RATE))
    out = audio[start:end].copy()
    f = min(int(FADE * SAMPLE_RATE), len(out) // 2)
    if f:
        ramp = np.linspace(0.0, 1.0, f, dtype=np.float32)
        out[:f] *= ramp
        out[-f:] *= ramp[::-1]
    return out


# -- assembly -----------------------------------------------------------------------------------


def build(
    script: Path, seed: int, minutes: float | None, jobs: int, log: Callable[[str], object] = print
) -> tuple[np.ndarray, list[str]]:
    """The episode's float32 samples (before the noise floor) and its reference lines."""
    sections = parse_script(script)
    target = None if minutes is None else minutes * 60.0
    pieces: list[np.ndarray] = [np.zeros(int(LEAD_IN * SAMPLE_RATE), np.float32)]
    total = len(pieces[0])
    lines: list[str] = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=jobs, initializer=_init_worker) as pool:
        index = 0
        while True:
            plan = plan_pass(sections, seed, index)
            flat = [j for turn in plan.sentences for j in turn]
            audio = iter(pool.map(_synth, flat, chunksize=1))
            for ti, turn in enumerate(plan.turns):
                if lines:
                    gap = np.zeros(int(plan.turn_pauses[ti] * SAMPLE_RATE), np.float32)
                    pieces.append(gap)
                    total += len(gap)
                for si in range(len(plan.sentences[ti])):
                    if si:
                        gap = np.zeros(
                            int(plan.sentence_pauses[ti][si - 1] * SAMPLE_RATE), np.float32
                        )
                        pieces.append(gap)
                        total += len(gap)
                    a = next(audio)
                    pieces.append(a)
                    total += len(a)
                lines.append(turn.text)
                if target is not None and total / SAMPLE_RATE >= target - TAIL:
                    break
            log(f"pass {index + 1}: {total / SAMPLE_RATE:.1f} s of audio")
            index += 1
            if target is None or total / SAMPLE_RATE >= target - TAIL:
                break
    pieces.append(np.zeros(int(TAIL * SAMPLE_RATE), np.float32))
    return np.concatenate(pieces), lines


def finish(speech: np.ndarray, seed: int, block: int = 1 << 20) -> np.ndarray:
    """Scale the speech to PEAK_DBFS, add the noise floor, quantize to int16 (block by block, so
    long episodes need little memory beyond the samples themselves)."""
    peak = float(np.max(np.abs(speech))) or 1.0
    gain = 10 ** (PEAK_DBFS / 20) / peak
    noise_rms = 10 ** (NOISE_DBFS / 20)
    rng = np.random.default_rng(derive_seed(seed, 0x9015E))
    pcm = np.empty(len(speech), "<i2")
    for i in range(0, len(speech), block):
        x = speech[i : i + block].astype(np.float64) * gain
        x += rng.standard_normal(len(x)) * noise_rms
        np.round(x * 32767.0, out=x)
        pcm[i : i + block] = np.clip(x, -32768, 32767)
    return pcm


def encode_mp3(pcm: np.ndarray, out: Path) -> None:
    """Mono 64 kbps mp3 via the imageio-ffmpeg binary, bit-exact (no metadata, no encoder tag)."""
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-c:a", "libmp3lame", "-b:a", BITRATE, "-ar", str(SAMPLE_RATE), "-ac", "1",
        "-id3v2_version", "0", "-write_id3v1", "0",
        "-f", "mp3",
    ]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        subprocess.run([*cmd, tmp], input=pcm.tobytes(), check=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate the sample podcast episode (mp3 + reference .txt) with hibari-tts.",
        epilog="Examples:\n"
        "  python scripts/make_sample.py\n"
        "  python scripts/make_sample.py --minutes 30 --out .bench/episode-30min.mp3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="output mp3; the reference transcript goes next to it as .txt "
        f"(default: {DEFAULT_OUT.relative_to(REPO)}, or .bench/episode-<N>min.mp3 with --minutes)",
    )
    ap.add_argument(
        "--minutes",
        type=float,
        help="make an episode at least this long by going through the script repeatedly "
        "(default: one pass, about four minutes)",
    )
    ap.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"master seed (default {DEFAULT_SEED})"
    )
    ap.add_argument(
        "--script",
        type=Path,
        default=DEFAULT_SCRIPT,
        help="dialogue file (default: scripts/sample_script.txt)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="synthesis processes (default: %(default)s); the output does not depend on it",
    )
    a = ap.parse_args(argv)
    if a.minutes is not None and a.minutes <= 0:
        ap.error("--minutes must be positive")
    out: Path = a.out or (
        DEFAULT_OUT if a.minutes is None else REPO / ".bench" / f"episode-{a.minutes:g}min.mp3"
    )
    if out.suffix.lower() != ".mp3":
        ap.error("--out must end in .mp3")

    t0 = time.perf_counter()
    speech, lines = build(
        a.script, a.seed, a.minutes, max(1, a.jobs), log=lambda m: print(m, file=sys.stderr)
    )
    t1 = time.perf_counter()
    pcm = finish(speech, a.seed)
    encode_mp3(pcm, out)
    txt = out.with_suffix(".txt")
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    t2 = time.perf_counter()

    secs = len(pcm) / SAMPLE_RATE
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    words = sum(len(s.split()) for s in lines)
    print(
        f"{out}: {int(secs // 60)}:{secs % 60:04.1f} ({secs:.1f} s), "
        f"{out.stat().st_size / 1e6:.2f} MB, sha256 {digest}"
    )
    print(f"{txt}: {len(lines)} turns, {words} words")
    print(
        f"synthesis {t1 - t0:.1f} s ({secs / (t1 - t0):.0f}x realtime, {a.jobs} jobs), "
        f"encode {t2 - t1:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
