"""Real-audio benchmark files, strung together from the recordings in samples/real/.

Writes, for each set, ``<name>.wav`` (16 kHz mono), ``<name>.txt`` (the reference text)
and ``<name>.truth.json`` (duration, reference, each spoken clip's place, and the stretches
with nobody talking):

    jfk          faster-whisper's jfk.flac as it is (11 s; the tail that invites hallucinations)
    sentences    every clip in samples/real/clips.tsv, one after another with pauses of
                 0.25-2 s over a faint room tone (80 s, 18 clips)
    podcast      a "hard podcast" (about 4 minutes): 32 s music intro, jingle, sentences, more
                 sentences over a music bed, jingle, 75 s of street ambience with nobody
                 talking (traffic swells, passing cars, distant horns), the jfk speech and
                 the LJ Speech sentence, 34 s music outro

Everything that isn't a recording is synthesised with numpy from a fixed seed, so the
files are the same on every run. ``--short`` makes a ~75 s podcast for the end-to-end
test (31 s music intro, two sentences, 20 s of street, jfk, 6 s outro).

    python scripts/make_real.py --out .bench/real [--sets jfk,sentences,podcast] [--short]
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from whisperfarm.media import SAMPLE_RATE, Decoder  # noqa: E402

RECORDINGS = REPO / "samples" / "real"
RATE = SAMPLE_RATE
SETS = ("jfk", "sentences", "podcast")


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # float32 in [-1, 1]
    text: str


@dataclass
class Track:
    """An episode being assembled, with its ground truth."""

    rng: np.random.Generator
    parts: list[np.ndarray] = field(default_factory=list)
    speech: list[dict[str, object]] = field(default_factory=list)
    nonspeech: list[dict[str, object]] = field(default_factory=list)
    length: int = 0

    @property
    def now(self) -> float:
        return self.length / RATE

    def add(self, audio: np.ndarray) -> None:
        self.parts.append(audio.astype(np.float32))
        self.length += len(audio)

    def pause(self, seconds: float) -> None:
        self.add(room_tone(seconds, self.rng))

    def say(self, clip: Clip, bed: np.ndarray | None = None) -> None:
        audio = level(clip.audio, -23.0)
        if bed is not None:
            audio = audio + bed[: len(audio)]
        self.speech.append(
            {"start": self.now, "end": self.now + len(audio) / RATE, "text": clip.text}
        )
        self.add(audio)

    def no_speech(self, audio: np.ndarray, what: str) -> None:
        self.nonspeech.append(
            {"start": self.now, "end": self.now + len(audio) / RATE, "what": what}
        )
        self.add(audio)

    def write(self, out: Path, name: str) -> Path:
        samples = np.concatenate(self.parts)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
        path = out / f"{name}.wav"
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(RATE)
            handle.writeframes(pcm.tobytes())
        reference = " ".join(str(s["text"]) for s in self.speech)
        truth = {
            "duration": len(samples) / RATE,
            "reference": reference,
            "speech": [
                {**s, "start": round(float(s["start"]), 3), "end": round(float(s["end"]), 3)}
                for s in self.speech
            ],  # type: ignore[arg-type]
            "nonspeech": [
                {**s, "start": round(float(s["start"]), 3), "end": round(float(s["end"]), 3)}  # type: ignore[arg-type]
                for s in self.nonspeech
            ],
        }
        path.with_suffix(".txt").write_text(reference + "\n", encoding="utf-8")
        path.with_suffix(".truth.json").write_text(
            json.dumps(truth, indent=2) + "\n", encoding="utf-8"
        )
        return path


def decode(path: Path) -> np.ndarray:
    decoder = Decoder(path)
    blocks = list(decoder.blocks())
    decoder.close()
    return np.concatenate(blocks).astype(np.float32) / 32768.0


def load_clips() -> dict[str, Clip]:
    clips = {}
    lines = (RECORDINGS / "clips.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        name, _source, text = line.split("\t")
        stem = name.removesuffix(".flac")
        clips[stem] = Clip(stem, decode(RECORDINGS / name), text)
    return clips


# --- synthesis ---------------------------------------------------------------------------


def level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale so the loudest 50 % of 20 ms frames have this RMS level."""
    frames = audio[: len(audio) - len(audio) % 320].reshape(-1, 320)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = np.sqrt(np.mean(np.sort(rms)[len(rms) // 2 :] ** 2)) + 1e-9
    return audio * (10 ** (dbfs / 20) / active)


def seconds(n: float) -> np.ndarray:
    return np.arange(int(n * RATE)) / RATE


def room_tone(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Faint broadband noise (about -62 dBFS): a quiet room, not digital silence."""
    return (rng.standard_normal(int(duration * RATE)) * 10 ** (-62 / 20)).astype(np.float32)


def note(freq: float, duration: float, *, decay: float = 2.5, harmonics: int = 5) -> np.ndarray:
    """A plucked, piano-like note: decaying harmonics."""
    t = seconds(duration)
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k**1.5 for k in range(1, harmonics + 1))
    envelope = np.exp(-decay * t) * np.minimum(1.0, t / 0.01)
    return (tone * envelope).astype(np.float32)


def midi(n: int) -> float:
    return float(440.0 * 2 ** ((n - 69) / 12))


PROGRESSION = [(60, 64, 67), (55, 59, 62), (57, 60, 64), (53, 57, 60)]  # C G Am F


def music(duration: float, rng: np.random.Generator, *, tempo: float = 112.0) -> np.ndarray:
    """Chords, a bass line, a melody, kick and hi-hat: an intro or outro."""
    beat = 60.0 / tempo
    out = np.zeros(int(duration * RATE), dtype=np.float32)

    def put(sound: np.ndarray, at: float, gain: float) -> None:
        i = int(at * RATE)
        if i >= len(out):
            return
        piece = sound[: len(out) - i]
        out[i : i + len(piece)] += gain * piece

    bar = 0
    while bar * 4 * beat < duration:
        chord = PROGRESSION[bar % len(PROGRESSION)]
        start = bar * 4 * beat
        for pitch in chord:
            put(note(midi(pitch), 4 * beat, decay=1.2), start, 0.10)
        for b in range(4):
            put(note(midi(chord[0] - 24), beat, decay=4.0, harmonics=3), start + b * beat, 0.25)
            kick = np.sin(2 * np.pi * 55 * seconds(0.15)) * np.exp(-30 * seconds(0.15))
            put(kick.astype(np.float32), start + b * beat, 0.5)
            hat = rng.standard_normal(int(0.04 * RATE)) * np.exp(-120 * seconds(0.04))
            put(np.diff(hat, prepend=0).astype(np.float32), start + (b + 0.5) * beat, 0.08)
            melody = chord[rng.integers(0, 3)] + 12
            put(note(midi(int(melody)), beat, decay=3.0), start + b * beat, 0.12)
        bar += 1
    fade = np.minimum(
        1.0, np.minimum(seconds(duration) / 0.5, (duration - seconds(duration)) / 1.5)
    )
    return level(out, -20.0) * fade[: len(out)].astype(np.float32)


def jingle() -> np.ndarray:
    """A rising arpeggio and a held chord, 3 s."""
    out = np.zeros(int(3.0 * RATE), dtype=np.float32)
    for i, pitch in enumerate((72, 76, 79, 84, 88, 91)):
        sound = note(midi(pitch), 1.0, decay=5.0)
        at = int(i * 0.18 * RATE)
        out[at : at + len(sound)] += sound[: len(out) - at]
    for pitch in (60, 64, 67, 72):
        sound = note(midi(pitch), 1.9, decay=1.5)
        at = int(1.1 * RATE)
        out[at : at + len(sound)] += 0.7 * sound[: len(out) - at]
    return level(out, -20.0)


def bed(duration: float) -> np.ndarray:
    """A soft sustained pad to talk over, about 12 dB under the voice."""
    t = seconds(duration)
    out = np.zeros(len(t), dtype=np.float32)
    chord_len = 4.0
    for n, chord in enumerate(PROGRESSION * int(duration // (chord_len * 4) + 1)):
        lo, hi = int(n * chord_len * RATE), int((n + 1) * chord_len * RATE)
        if lo >= len(t):
            break
        part = t[lo:hi] - n * chord_len
        swell = np.sin(np.pi * part / chord_len) ** 0.5
        for pitch in chord:
            out[lo:hi] += (np.sin(2 * np.pi * midi(pitch - 12) * part) * swell).astype(np.float32)
    return level(out, -35.0)


def lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    spectrum[freqs > cutoff] *= np.exp(-(freqs[freqs > cutoff] - cutoff) / (cutoff * 0.3))
    return np.fft.irfft(spectrum, len(x)).astype(np.float32)


def street(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Street ambience with nobody talking: a low traffic rumble, swells of passing cars,
    distant horns and a far-off siren-like whine."""
    n = int(duration * RATE)
    t = seconds(duration)
    rumble = lowpass(rng.standard_normal(n).astype(np.float32), 250.0)
    swells = np.ones(n, dtype=np.float32) * 0.3
    for _ in range(int(duration / 6)):
        centre, width = rng.uniform(0, duration), rng.uniform(1.5, 3.5)
        swells += np.exp(-(((t - centre) / width) ** 2)).astype(np.float32) * rng.uniform(0.6, 1.4)
    hiss = lowpass(rng.standard_normal(n).astype(np.float32), 3000.0) * 0.25
    out = level(rumble, -30.0) * swells + level(hiss, -42.0) * swells
    for _ in range(max(1, int(duration / 25))):
        at, length = rng.uniform(1, duration - 2), rng.uniform(0.3, 0.8)
        tt = seconds(length)
        horn = np.sign(np.sin(2 * np.pi * 392 * tt)) + np.sign(np.sin(2 * np.pi * 494 * tt))
        horn = lowpass(horn.astype(np.float32), 1500.0) * np.minimum(1.0, tt / 0.03)
        i = int(at * RATE)
        out[i : i + len(horn)] += level(horn, -36.0)[: n - i]
    return out.astype(np.float32)


# --- the sets ----------------------------------------------------------------------------

PAUSES = (0.6, 1.2, 0.35, 2.0, 0.25, 0.9, 1.5, 0.45)


def make_jfk(clips: dict[str, Clip], out: Path) -> Path:
    track = Track(np.random.default_rng(1))
    track.say(clips["fw-jfk"])
    return track.write(out, "jfk")


def make_sentences(clips: dict[str, Clip], out: Path) -> Path:
    track = Track(np.random.default_rng(2))
    track.pause(0.5)
    for n, clip in enumerate(clips.values()):
        track.say(clip)
        track.pause(PAUSES[n % len(PAUSES)])
    return track.write(out, "sentences")


def make_podcast(clips: dict[str, Clip], out: Path, *, short: bool = False) -> Path:
    rng = np.random.default_rng(3)
    track = Track(rng)
    sentences = [c for name, c in clips.items() if name.startswith("sb-") and "LJ" not in name]
    if short:
        track.no_speech(music(31.0, rng), "music intro")
        track.pause(0.5)
        for n, clip in enumerate(sentences[:2]):
            track.say(clip)
            track.pause(PAUSES[n])
        track.no_speech(street(20.0, rng), "street ambience")
        track.pause(0.5)
        track.say(clips["fw-jfk"])
        track.pause(0.5)
        track.no_speech(music(6.0, rng), "music outro")
        return track.write(out, "podcast-short")
    track.no_speech(music(32.0, rng), "music intro")
    track.no_speech(jingle(), "jingle")
    track.pause(0.5)
    for n, clip in enumerate(sentences[:8]):
        track.say(clip)
        track.pause(PAUSES[n % len(PAUSES)])
    over = sentences[8:]
    pad = bed(sum(len(c.audio) for c in over) / RATE + 2.0 * len(over) + 2.0)
    at = 0
    for n, clip in enumerate(over):
        length = len(clip.audio)
        track.say(clip, bed=pad[at : at + length])
        at += length
        gap = int(PAUSES[(n + 3) % len(PAUSES)] * RATE)
        track.add(pad[at : at + gap] + room_tone(gap / RATE, rng))
        at += gap
    track.pause(0.3)
    track.no_speech(jingle(), "jingle")
    track.pause(0.5)
    track.no_speech(street(75.0, rng), "street ambience")
    track.pause(0.5)
    for name in ("fw-jfk", "fw-stereo-left", "fw-stereo-right", "sb-LJ050-0131"):
        track.say(clips[name])
        track.pause(0.8)
    track.no_speech(music(34.0, rng, tempo=96.0), "music outro")
    return track.write(out, "podcast")


def make(out: Path, sets: list[str], *, short: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    clips = load_clips()
    paths = []
    for name in sets:
        if name == "jfk":
            paths.append(make_jfk(clips, out))
        elif name == "sentences":
            paths.append(make_sentences(clips, out))
        elif name == "podcast":
            paths.append(make_podcast(clips, out, short=short))
        else:
            raise SystemExit(f"unknown set {name!r}: use {', '.join(SETS)}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "real")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--short", action="store_true", help="a ~75 s podcast (for the tests)")
    args = parser.parse_args()
    for path in make(args.out, args.sets.split(","), short=args.short):
        truth = json.loads(path.with_suffix(".truth.json").read_text(encoding="utf-8"))
        print(
            f"{path} ({truth['duration']:.1f} s, "
            f"{len(truth['nonspeech'])} stretches without speech)"
        )


if __name__ == "__main__":
    main()
