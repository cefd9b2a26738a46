"""Cutting an episode into chunks at pauses.

The cutter reads the decoded PCM as it streams in and, for each chunk, looks at the
loudness of 20 ms frames between ``min_seconds`` and ``max_seconds`` after the chunk's
start. It cuts in the middle of the latest pause of at least ``min_pause`` seconds: a gap
that long is between words, so no word is split and the seam needs no repair.

Where no such pause exists (music under speech, a fast talker), it cuts at the quietest
moment and the two chunks overlap by ``overlap_seconds`` on each side of the cut. Both
workers then hear the words at the seam whole, and the stitcher (``stitch.py``) keeps each
word once by aligning the two transcripts of the overlap.

``max_seconds`` stays under Whisper's 30-second window, so each chunk is one decoder
window, with no window boundary inside it, and room after it for the silence that lets the
model finish the chunk's last sentence there (``chunk_limits``).

With a speech model (``CutterConfig.speech``, on by default; see ``speech.py``):

- a long stretch the model hears no speech in (``long_pause``: music, noise) is cut
  ``pad`` after the speech before it ends, so no chunk carries a long tail of non-speech
  for Whisper to invent text in, and a chunk that has heard no speech yet ends just before
  speech begins;
- where loudness finds no pause (music under a voice), the cut goes in the middle of the
  latest pause the model hears, so the seam needs no overlap;
- a chunk with less than ``min_speech`` seconds of speech is not sent, and every chunk
  records its speech spans for the stitched transcript (``speech.keep_spoken``).

Ordinary pauses between words and sentences are still found by loudness, as before: where
a cut lands in a pause changes what Whisper writes at the chunk's end (the seams bench
lost a sentence at one seam when the cut moved 0.3 s within its pause).
"""

from __future__ import annotations

import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisperfarm import chunk_limits, speech
from whisperfarm.ledger import ChunkPlan
from whisperfarm.media import SAMPLE_RATE
from whisperfarm.speech import WINDOW, SpeechConfig

FRAME = 320  # 20 ms at 16 kHz


@dataclass(frozen=True)
class CutterConfig:
    min_seconds: float = chunk_limits.MIN_SECONDS
    max_seconds: float = chunk_limits.MAX_SECONDS
    overlap_seconds: float = chunk_limits.OVERLAP_SECONDS
    min_pause: float = 0.3
    silence_dbfs: float = -50.0
    speech: SpeechConfig | None = field(default_factory=SpeechConfig)  # None: loudness alone

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds < self.max_seconds - 2 * self.overlap_seconds:
            raise ValueError(
                "chunk min seconds must be above 0 and below max seconds minus twice the overlap"
            )
        if self.overlap_seconds * 2 >= self.min_seconds:
            raise ValueError("overlap must be under half the minimum chunk length")


def frame_db(samples: np.ndarray) -> np.ndarray:
    """Loudness in dBFS of each whole 20 ms frame."""
    usable = len(samples) - len(samples) % FRAME
    if usable == 0:
        return np.zeros(0)
    frames = samples[:usable].astype(np.float32).reshape(-1, FRAME) / 32768.0
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return 20.0 * np.log10(rms + 1e-10)


def has_speech(samples: np.ndarray, silence_dbfs: float) -> bool:
    db = frame_db(samples)
    if db.size == 0:
        return False
    return bool(np.percentile(db, 99) > silence_dbfs)


def _quiet_runs(quiet: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame index pairs of consecutive True values."""
    padded = np.concatenate(([False], quiet, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def find_cut(
    db: np.ndarray, config: CutterConfig, lead: float = 0.0, voiced: np.ndarray | None = None
) -> tuple[int, bool]:
    """Pick a cut in a chunk whose frames' loudness is ``db``, from where the chunk's owned
    part starts. ``lead`` is the overlap already in front of it (its audio starts that much
    earlier); ``voiced``, when a speech model runs, says for each frame whether it holds
    speech. Returns (frame index of the cut, clean) where clean means the cut sits in a
    real pause. The chunk's audio stays within ``max_seconds`` either way: a cut without a
    pause is searched earlier, leaving room for the overlap after it."""
    frames_per_second = SAMPLE_RATE / FRAME
    lo = int(config.min_seconds * frames_per_second)
    hi = min(int((config.max_seconds - lead) * frames_per_second), len(db))
    forced_hi = min(
        int((config.max_seconds - lead - config.overlap_seconds) * frames_per_second), len(db)
    )
    min_frames = max(1, int(config.min_pause * frames_per_second))
    heard: list[tuple[int, int]] = []  # pauses the speech model hears
    if voiced is not None and config.speech is not None:
        pad = int(config.speech.pad * frames_per_second)
        heard = [(a, b) for a, b in _quiet_runs(~voiced[lo:hi]) if b - a >= min_frames]
        if heard and heard[0][0] == 0 and not voiced[:lo].any():
            # No speech yet: end the chunk just before speech begins (it is not sent).
            start, end = heard[0]
            return lo + max(start, end - pad), True
        start, end = heard[-1] if heard else (0, 0)
        if start == 0 and end > 0:
            start = int(np.flatnonzero(voiced[:lo])[-1]) + 1 - lo  # it began earlier
        if end - start >= config.speech.long_pause * frames_per_second:
            # A long stretch without speech (music, noise): cut soon after the speech, so
            # it goes to the next chunk (not sent) and not into this one's tail, where
            # Whisper invents text; a short chunk beats a long tail.
            return lo + start + pad, True
    window = db[lo:hi]
    floor, loud = np.percentile(db[:hi], [5, 90])
    if loud - floor >= 15.0:
        threshold = floor + 0.3 * (loud - floor)
        runs = [(a, b) for a, b in _quiet_runs(window < threshold) if b - a >= min_frames]
        if runs:
            start, end = runs[-1]
            return lo + (start + end) // 2, True
    if heard:
        # A pause the model hears where loudness finds none (a voice over music).
        start, end = heard[-1]
        return lo + (start + end) // 2, True
    # No pause: the quietest 100 ms, and the caller overlaps the chunks around it.
    window = db[lo:forced_hi]
    smooth = np.convolve(window, np.ones(5) / 5, mode="same") if len(window) >= 5 else window
    return lo + int(np.argmin(smooth)), False


class _SpeechTrack:
    """The speech model's verdict on the part of the stream the cutter still holds: one
    speech/no-speech flag per 32 ms window, from window ``first`` on."""

    def __init__(self, config: SpeechConfig, detector: speech.SpeechDetector):
        self.config = config
        self.detector = detector
        self.voiced = np.zeros(0, dtype=bool)
        self.first = 0
        self._on = False

    def add(self, probs: np.ndarray) -> None:
        mask, self._on = speech.speech_mask(probs, self.config, on=self._on)
        self.voiced = np.concatenate((self.voiced, mask))

    def frames(self, start: int, count: int) -> np.ndarray:
        """Speech flags of ``count`` 20 ms frames from sample ``start`` (a frame takes the
        window holding its middle; windows not heard yet count as speech)."""
        if len(self.voiced) == 0:
            return np.ones(count, dtype=bool)
        middles = start + np.arange(count) * FRAME + FRAME // 2
        index = middles // WINDOW - self.first
        known = index < len(self.voiced)
        return np.where(known, self.voiced[np.minimum(index, len(self.voiced) - 1)], True)

    def chunk(self, start: int, end: int) -> tuple[float, tuple[tuple[float, float], ...]]:
        """Seconds of speech between samples ``start`` and ``end``, and the padded speech
        spans there (seconds on the episode timeline)."""
        pad = int(self.config.pad * SAMPLE_RATE)
        lo = max(self.first, (start - pad) // WINDOW)
        hi = -(-(end + pad) // WINDOW)
        found = speech.spans(self.voiced[lo - self.first : hi - self.first], lo, self.config)
        inside = self.voiced[start // WINDOW - self.first : -(-end // WINDOW) - self.first]
        seconds = float(inside.sum()) * WINDOW / SAMPLE_RATE
        return seconds, tuple(speech.clip(found, start / SAMPLE_RATE, end / SAMPLE_RATE))

    def forget_before(self, sample: int) -> None:
        drop = max(0, (sample - int(self.config.pad * SAMPLE_RATE)) // WINDOW - 1 - self.first)
        self.voiced = self.voiced[drop:]
        self.first += drop


def cut(
    blocks: Iterable[np.ndarray],
    config: CutterConfig,
    detector: speech.SpeechDetector | None = None,
) -> Iterator[tuple[ChunkPlan, np.ndarray]]:
    """Plan chunks over a stream of int16 sample blocks; yields each plan with its audio.
    With ``config.speech`` the speech model (``detector``, default Silero) hears the stream
    as it arrives.

    Memory stays bounded by about ``max_seconds + overlap`` of audio whatever the length.
    """
    rate = SAMPLE_RATE
    max_len = int(config.max_seconds * rate)
    overlap = int(config.overlap_seconds * rate)
    track = None
    if config.speech is not None:
        track = _SpeechTrack(config.speech, detector or speech.SpeechDetector())
    buffer = np.zeros(0, dtype=np.int16)
    origin = 0  # sample index of buffer[0] on the episode timeline
    keep_start = 0  # where the current chunk's owned part begins
    audio_start = 0  # where its audio begins (earlier when it overlaps the previous chunk)
    idx = 0

    def emit(cut_at: int, audio_end: int, next_audio_start: int) -> tuple[ChunkPlan, np.ndarray]:
        nonlocal buffer, origin, keep_start, audio_start, idx
        audio = buffer[audio_start - origin : audio_end - origin].copy()
        voiced = has_speech(audio, config.silence_dbfs)
        spans = None
        if track is not None:
            assert config.speech is not None
            seconds, spans = track.chunk(audio_start, audio_end)
            voiced = voiced and seconds >= config.speech.min_speech
        plan = ChunkPlan(
            idx=idx,
            start=audio_start / rate,
            end=audio_end / rate,
            keep_start=keep_start / rate,
            keep_end=cut_at / rate,
            speech=voiced,
            speech_spans=spans,
        )
        buffer = buffer[next_audio_start - origin :]
        origin = next_audio_start
        if track is not None:
            track.forget_before(origin)
        keep_start, audio_start = cut_at, next_audio_start
        idx += 1
        return plan, audio

    def next_cut(available_end: int) -> tuple[ChunkPlan, np.ndarray]:
        window = buffer[keep_start - origin : keep_start - origin + max_len]
        db = frame_db(window)
        voiced = track.frames(keep_start, len(db)) if track is not None else None
        frame, clean = find_cut(db, config, (keep_start - audio_start) / rate, voiced)
        cut_at = keep_start + frame * FRAME
        if clean:
            return emit(cut_at, cut_at, cut_at)
        return emit(cut_at, min(cut_at + overlap, available_end), cut_at - overlap)

    for block in blocks:
        buffer = np.concatenate((buffer, block))
        if track is not None:
            track.add(track.detector.feed(block))
        while origin + len(buffer) >= keep_start + max_len + overlap:
            yield next_cut(origin + len(buffer))
    if track is not None:
        track.add(track.detector.flush())
    end = origin + len(buffer)
    while end - audio_start > max_len:
        yield next_cut(end)
    if end > keep_start:
        yield emit(end, end, end)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """16 kHz mono 16-bit WAV, written under a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with wave.open(str(partial), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(samples.astype("<i2").tobytes())
    partial.replace(path)
