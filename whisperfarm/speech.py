"""Speech detection: where someone speaks, from the Silero VAD model, not from loudness.

faster-whisper ships Silero VAD as an ONNX model (onnxruntime is one of its dependencies).
It gives every 32 ms window (512 samples at 16 kHz) a speech probability. Its LSTM carries
state from window to window, so ``SpeechDetector`` is fed the episode's audio once, in
order, as it streams in; blocks of any size give the same probabilities, so a file always
gets the same chunk plan (resume matches chunks by their cut).

Loudness can't tell music, a jingle or street noise from a voice; the model can. The
chunker (``chunking.py``) uses the probabilities three ways:

- it keeps long stretches without speech out of a chunk's tail, and cuts in a pause the
  model hears where music under the voice leaves no quiet one;
- a chunk with less than ``min_speech`` seconds of speech is not sent to a worker;
- each chunk records its speech spans on the episode's timeline, and after stitching
  ``keep_spoken`` drops the words Whisper placed well away from them (its "Thank you for
  watching" over an intro's music).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisperfarm.errors import ModelError
from whisperfarm.media import SAMPLE_RATE
from whisperfarm.transcripts import Segment

WINDOW = 512  # samples per probability: 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees with each window
MODEL_FILE = "silero_vad_v6.onnx"

Span = tuple[float, float]


@dataclass(frozen=True)
class SpeechConfig:
    threshold: float = 0.5  # a window at or above this starts speech
    neg_threshold: float = 0.35  # speech goes on until a window falls under this
    min_speech: float = 0.25  # seconds: less speech than this in a chunk is no speech
    pad: float = 0.4  # seconds added to each side of a speech span (faster-whisper's 400 ms)
    long_pause: float = 3.0  # seconds without speech that the cutter keeps out of a tail


def model_path() -> Path:
    """Silero VAD as faster-whisper ships it (found without importing faster-whisper,
    which would load CTranslate2 into the CLI for nothing)."""
    spec = importlib.util.find_spec("faster_whisper")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "assets" / MODEL_FILE
    if path is None or not path.exists():
        raise ModelError(
            f"the speech model ({MODEL_FILE}) is missing: pip install 'faster-whisper>=1.2.1', "
            "or set vad = false in the config (WHISPERFARM_VAD=false) to cut by loudness"
        )
    return path


class SpeechDetector:
    """Speech probabilities of a stream of 16 kHz int16 blocks, one per 32 ms window."""

    def __init__(self, session: Any = None):
        if session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            options.log_severity_level = 4
            session = onnxruntime.InferenceSession(
                str(model_path()), providers=["CPUExecutionProvider"], sess_options=options
            )
        self.session = session
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def feed(self, block: np.ndarray) -> np.ndarray:
        """The probabilities of the windows this block completes."""
        samples = np.concatenate((self._pending, block.astype(np.float32) / 32768.0))
        whole = len(samples) - len(samples) % WINDOW
        self._pending = samples[whole:]
        if whole == 0:
            return np.zeros(0, np.float32)
        windows = samples[:whole].reshape(-1, WINDOW)
        before = np.concatenate((self._context[None, :], windows[:-1, -CONTEXT:]))
        self._context = windows[-1, -CONTEXT:].copy()
        h, c = self._state
        probs, h, c = self.session.run(
            None, {"input": np.concatenate((before, windows), axis=1), "h": h, "c": c}
        )
        self._state = (h, c)
        return np.asarray(probs, np.float32).reshape(-1)

    def flush(self) -> np.ndarray:
        """The last, partial window, padded with silence (none when the stream ended on a
        window's edge)."""
        if len(self._pending) == 0:
            return np.zeros(0, np.float32)
        padding = np.zeros(WINDOW - len(self._pending), np.int16)
        return self.feed(np.concatenate(((self._pending * 32768.0).astype(np.int16), padding)))


def speech_mask(
    probs: np.ndarray, config: SpeechConfig, *, on: bool = False
) -> tuple[np.ndarray, bool]:
    """Speech or not for each window: speech starts at ``threshold`` and lasts until a
    window falls under ``neg_threshold`` (Silero's own hysteresis). ``on``: whether the
    window before these was speech. Returns the flags and whether the last is speech."""
    mask = np.zeros(len(probs), dtype=bool)
    for i, p in enumerate(probs.tolist()):
        on = p >= config.threshold or (on and p >= config.neg_threshold)
        mask[i] = on
    return mask, on


def spans(mask: np.ndarray, first_window: int, config: SpeechConfig) -> list[Span]:
    """Speech spans in seconds on the episode timeline from a mask of windows starting at
    window ``first_window``: each run padded by ``config.pad``, overlapping ones merged."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    seconds = WINDOW / SAMPLE_RATE
    out: list[Span] = []
    for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        start = max(0.0, (first_window + a) * seconds - config.pad)
        end = (first_window + b) * seconds + config.pad
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def clip(found: Sequence[Span], start: float, end: float) -> list[Span]:
    """The parts of ``found`` between ``start`` and ``end``, rounded to milliseconds; a
    sliver under 50 ms (the padding of speech outside) is left out."""
    inside = [(round(max(a, start), 3), round(min(b, end), 3)) for a, b in found]
    return [(a, b) for a, b in inside if b - a >= 0.05]


# Whisper times the last word of a sentence loosely: the seams of the real-audio bench
# showed "middle." as a zero-length word 0.7 s after the speech ended. Within this many
# seconds of speech a word is kept; what Whisper invents over music or noise lies further.
SLACK = 1.0


def _near(start: float, end: float, found: Sequence[Span]) -> bool:
    return any(a - SLACK <= end and start <= b + SLACK for a, b in found)


def keep_spoken(segments: Iterable[Segment], found: Sequence[Span] | None) -> list[Segment]:
    """Drop what Whisper placed where nobody speaks: each word, and each segment without
    words, more than SLACK seconds from every speech span. A word is judged as a whole,
    not by its middle: Whisper stretches a word over the pause before it ("Americans, ...
    ask"). A segment that loses words keeps the rest, with its text and times from them.
    ``found`` None: no speech map, everything is kept."""
    if found is None:
        return list(segments)
    kept = []
    for segment in segments:
        if segment.words is None:
            if _near(segment.start, segment.end, found):
                kept.append(segment)
            continue
        words = [w for w in segment.words if _near(w.start, w.end, found)]
        if len(words) == len(segment.words):
            kept.append(segment)
        elif words:
            text = "".join(w.word for w in words).strip()
            kept.append(Segment(words[0].start, max(w.end for w in words), text, words))
    return kept


def episode_spans(chunks: Iterable[Any]) -> list[Span] | None:
    """The speech map of an episode from its chunk rows: each chunk's recorded spans, or
    its whole audio where it has none (chunked without the model). None when no chunk
    has any: nothing to filter by."""
    found: list[Span] = []
    recorded = False
    for chunk in chunks:
        raw = chunk["speech_spans"]
        if raw is None:
            found.append((chunk["start"], chunk["end"]))
            continue
        recorded = True
        found.extend((a, b) for a, b in json.loads(raw))
    return sorted(found) if recorded else None
