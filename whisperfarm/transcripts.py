"""The transcript model and its file formats: txt, srt, vtt, json, tsv."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisperfarm.errors import UsageError
from whisperfarm.subtitles import CueStyle, cues, karaoke


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


def _subtitles(
    transcript: Transcript, style: CueStyle | None
) -> list[tuple[float, float, list[list[str]]]]:
    """The timed cues of srt and vtt, each as its lines of words (whisperfarm.subtitles)."""
    style = style or CueStyle()
    duration = transcript.episode.get("duration")
    horizon = float(duration) if isinstance(duration, int | float) else None
    shown: list[tuple[float, float, list[list[str]]]] = []
    for cue in cues(_cues(transcript), style, horizon=horizon):
        if style.highlight_words:
            shown.extend(karaoke(cue))
        else:
            shown.append((cue.start, cue.end, [[t.text for t in line] for line in cue.lines]))
    return shown


def to_srt(transcript: Transcript, style: CueStyle | None = None) -> str:
    blocks = []
    for number, (start, end, lines) in enumerate(_subtitles(transcript, style), start=1):
        text = "\n".join(" ".join(line) for line in lines)
        blocks.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, style: CueStyle | None = None) -> str:
    blocks = ["WEBVTT\n"]
    for start, end, lines in _subtitles(transcript, style):
        text = "\n".join(" ".join(_vtt_text(word) for word in line) for line in lines)
        blocks.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n")
    return "\n".join(blocks)


def _vtt_text(word: str) -> str:
    """A word as WebVTT cue text: "&" and "<" escaped, "-->" (which may not appear in a
    cue) shortened; karaoke's own <u> tags kept."""
    if word.startswith("<u>") and word.endswith("</u>"):
        return f"<u>{_vtt_text(word[3:-4])}</u>"
    return (
        word.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("--&gt;", "->")
    )


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


WRITERS: dict[str, Callable[..., str]] = {
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "json": to_json,
    "tsv": to_tsv,
}
SUBTITLE_FORMATS = ("srt", "vtt")  # their writers take a CueStyle too


def check_out_dir(out_dir: Path) -> None:
    """Fail now, before any work, unless transcripts can be written in ``out_dir``: an
    existing directory we can write in, or one that can be created (``write_outputs``
    creates it). Creates nothing but a temporary file, removed at once."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file: give a directory (created if missing)")
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"--out {out_dir} can't be created: {existing} is a file; give a directory"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(
            f"can't write transcripts in --out {out_dir} ({existing}: {reason}): "
            "give a directory you can write to"
        ) from error


def write_outputs(
    transcript: Transcript,
    out_dir: Path,
    stem: str,
    formats: list[str],
    *,
    subtitles: CueStyle | None = None,
) -> list[Path]:
    """Write every format under temporary names, then rename them all into place, so an
    interrupted write never leaves a half-written transcript behind. ``subtitles``: how
    srt and vtt cues are cut and wrapped (default: ``CueStyle()``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name in formats:
            final = out_dir / f"{stem}.{name}"
            partial = out_dir / f".{stem}.{name}.partial"
            if name in SUBTITLE_FORMATS:
                text = WRITERS[name](transcript, subtitles)
            else:
                text = WRITERS[name](transcript)
            partial.write_text(text, encoding="utf-8")
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
