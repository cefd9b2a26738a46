"""The decoding options: what a stored chunk result depends on besides the audio and the
model. One home for their names, their defaults, how an episode records them, and the key
its results are stored under.

An episode records its current options (``episodes.options``, a JSON object) and their
key (``episodes.options_key``); each chunk result is stored under the key of the options
it was made with (``results.options_key``, migration m009). Changing an option queues the
chunks that have no result under the new key and keeps the others' results: running with
the earlier options again finds them.

The first four options were all an episode recorded before the flags after them came;
those are recorded only when not at their defaults, so the key of options given before
they existed stays the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

Task = Literal["transcribe", "translate"]
TASKS: tuple[Task, ...] = get_args(Task)


class TaskName(StrEnum):
    """The tasks as a choice typer reads (it reads a Literal only in recent versions)."""

    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


assert tuple(TaskName) == TASKS  # one list: the Literal's

ALWAYS_SENT = ("language", "beam_size")
"""Options every job has carried since the first version."""
SENT_WHEN_SET = (
    "task",
    "initial_prompt",
    "hotwords",
    "temperature",
    "vad_filter",
    "compute_type",
)
"""Options a job carries only when its episode records them (not at their defaults)."""
WIRE_OPTIONS = ALWAYS_SENT + SENT_WHEN_SET
"""The options a job carries to the worker, by the wire's names (worker.wire.Job).
``word_timestamps`` travels too, per chunk (the queue turns it on where the stitcher needs
words); ``compute_type`` says how the worker loads the model for the job (a worker that
gets none, from a coordinator before this, loads it as its own setting says)."""


@dataclass(frozen=True)
class Decoding:
    language: str | None = None
    beam_size: int = 5
    word_timestamps: bool = False
    compute_type: str = "int8"
    task: Task = "transcribe"
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperature: float | None = None
    """The first temperature; on a failed window faster-whisper retries 0.2 higher, up to
    1.0, as the whisper CLI's ``--temperature_increment_on_fallback`` does. None: its
    default, 0 then 0.2 … 1.0."""
    vad_filter: bool = False

    def options(self) -> dict[str, Any]:
        """What an episode records (and its results are keyed by)."""
        options: dict[str, Any] = {
            "language": self.language,
            "beam_size": self.beam_size,
            "word_timestamps": self.word_timestamps,
            "compute_type": self.compute_type,
        }
        for name, default in _ADDED_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                options[name] = value
        return options


_ADDED_DEFAULTS: dict[str, Any] = {
    "task": "transcribe",
    "initial_prompt": None,
    "hotwords": None,
    "temperature": None,
    "vad_filter": False,
}


def options_key(options: dict[str, Any]) -> str:
    """The key results made with ``options`` are stored under: a hash of their canonical
    JSON, so the same options always give the same key."""
    canonical = json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def describe(options: dict[str, Any]) -> str:
    """One line for status: the options that say how an episode is transcribed."""
    parts = [options.get("language") or "language detected"]
    if options.get("task", "transcribe") != "transcribe":
        parts.append(str(options["task"]))
    parts.append(f"beam {options.get('beam_size', 5)}")
    if options.get("temperature") is not None:
        parts.append(f"temperature {options['temperature']:g}")
    if options.get("word_timestamps"):
        parts.append("words")
    if options.get("vad_filter"):
        parts.append("vad filter")
    if options.get("compute_type"):
        parts.append(str(options["compute_type"]))
    if options.get("initial_prompt"):
        parts.append(f"prompt {_short(options['initial_prompt'])}")
    if options.get("hotwords"):
        parts.append(f"hotwords {_short(options['hotwords'])}")
    return " · ".join(parts)


def _short(text: str, width: int = 30) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")
