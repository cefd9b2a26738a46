"""The transcript model and its file formats: txt, srt, vtt, json, tsv."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] | None = None


@dataclass
class Transcript:
    segments: list[Segment]
    episode: dict[str, Any] = field(default_factory=dict)
    language: str | None = None

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.segments if segment.text)


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(transcript: Transcript) -> list[Segment]:
    return [segment for segment in transcript.segments if segment.text.strip()]


def to_txt(transcript: Transcript) -> str:
    return "".join(f"{segment.text.strip()}\n" for segment in _cues(transcript))


def to_srt(transcript: Transcript) -> str:
    blocks = []
    for number, segment in enumerate(_cues(transcript), start=1):
        start, end = _timestamp(segment.start, ","), _timestamp(segment.end, ",")
        blocks.append(f"{number}\n{start} --> {end}\n{segment.text.strip()}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = ["WEBVTT\n"]
    for segment in _cues(transcript):
        start, end = _timestamp(segment.start, "."), _timestamp(segment.end, ".")
        # "-->" may not appear in cue text
        blocks.append(f"{start} --> {end}\n{segment.text.strip().replace('-->', '->')}\n")
    return "\n".join(blocks)


def to_tsv(transcript: Transcript) -> str:
    lines = ["start\tend\ttext"]
    for segment in _cues(transcript):
        text = " ".join(segment.text.split())
        lines.append(f"{round(segment.start * 1000)}\t{round(segment.end * 1000)}\t{text}")
    return "\n".join(lines) + "\n"


def to_json(transcript: Transcript) -> str:
    segments = []
    for number, segment in enumerate(_cues(transcript)):
        item: dict[str, Any] = {
            "id": number,
            "start": round(segment.start, 3),
            "end": round(segment.end, 3),
            "text": segment.text.strip(),
        }
        if segment.words is not None:
            item["words"] = [
                {**asdict(word), "start": round(word.start, 3), "end": round(word.end, 3)}
                for word in segment.words
            ]
        segments.append(item)
    document = {
        "episode": transcript.episode,
        "language": transcript.language,
        "text": transcript.text,
        "segments": segments,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


WRITERS: dict[str, Callable[[Transcript], str]] = {
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "json": to_json,
    "tsv": to_tsv,
}


def write_outputs(
    transcript: Transcript, out_dir: Path, stem: str, formats: list[str]
) -> list[Path]:
    """Write every format under temporary names, then rename them all into place, so an
    interrupted write never leaves a half-written transcript behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name in formats:
            final = out_dir / f"{stem}.{name}"
            partial = out_dir / f".{stem}.{name}.partial"
            partial.write_text(WRITERS[name](transcript), encoding="utf-8")
            staged.append((partial, final))
        for partial, final in staged:
            os.replace(partial, final)
    finally:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
    return [final for _, final in staged]


def load_json(path: Path) -> Transcript:
    """Read back a transcript written by ``to_json``."""
    document = json.loads(path.read_text(encoding="utf-8"))
    segments = []
    for item in document["segments"]:
        words = None
        if "words" in item:
            words = [Word(**word) for word in item["words"]]
        segments.append(Segment(item["start"], item["end"], item["text"], words))
    return Transcript(segments, document.get("episode", {}), document.get("language"))
