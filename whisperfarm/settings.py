"""Every setting whisperfarm reads, in one pydantic-settings class.

Precedence, highest first:
1. command-line flags (passed to ``load_settings(**overrides)``),
2. environment variables (``WHISPERFARM_*``, plus Fly's own ``FLY_API_TOKEN``/``FLY_APP``),
3. the config file, TOML, at ``$WHISPERFARM_CONFIG`` or ``<home>/config.toml``,
4. the defaults below.

The home directory holds the ledger, chunk audio, results and logs. It comes from
``WHISPERFARM_HOME`` (or ``home`` in an explicitly named config file), else the platform's
app data directory.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from whisperfarm import chunk_limits
from whisperfarm.decoding import Decoding, Task
from whisperfarm.errors import UsageError
from whisperfarm.languages import english_only, language_code
from whisperfarm.subtitles import CueStyle
from worker.audio import ChunkFormat
from worker.wire import MAX_JOBS_PER_CLAIM, ComputeType

DEFAULT_FORMATS = ("txt", "srt", "vtt", "json")
ALL_FORMATS = ("txt", "srt", "vtt", "json", "tsv")
DEFAULT_FLY_API_URL = "https://api.machines.dev"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("whisperfarm", appauthor=False))


def config_path() -> Path:
    explicit = os.environ.get("WHISPERFARM_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("WHISPERFARM_HOME")
    return (Path(home).expanduser() if home else default_home()) / "config.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WHISPERFARM_",
        extra="forbid",  # a misspelt key in the config file is refused, not ignored
        populate_by_name=True,
    )

    home: Path = Field(default_factory=default_home)

    # Transcription
    model: str = "small.en"
    compute_type: ComputeType = "int8"
    language: str | None = None
    beam_size: int = Field(5, ge=1, le=10)
    word_timestamps: bool = False
    task: Task = "transcribe"
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    # faster-whisper's own VAD (its Silero model, inside the worker): it drops the chunk's
    # stretches without speech before decoding. Not ``vad`` below, the cutter's.
    vad_filter: bool = False

    # Subtitles (srt, vtt): whisperfarm/subtitles.py says where the defaults come from.
    max_line_width: int = Field(CueStyle.max_line_width, ge=1)
    max_line_count: int = Field(CueStyle.max_line_count, ge=1)
    highlight_words: bool = False

    # Local farm
    workers: int | None = Field(None, ge=0)
    threads: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1, le=MAX_JOBS_PER_CLAIM)
    """Chunks each local worker claims and decodes at once (None: the worker's default
    for its device, worker.device.DEFAULT_BATCH_SIZE)."""
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    formats: str = ",".join(DEFAULT_FORMATS)

    # Queue behaviour
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Back up a straggler (a chunk running twice as long as done chunks took) on an idle
    # worker once the queue is empty; the first result wins (whisperfarm/ledger/queue.py).
    # Never one local worker's chunk on another: they share this machine's cores, so a
    # backup would slow the chunk it races (ledger.queue).
    backups: bool = True

    # Chunking: cut at a pause between min and max seconds (whisperfarm/chunk_limits.py:
    # why these defaults).
    chunk_min_seconds: float = Field(chunk_limits.MIN_SECONDS, gt=0)
    chunk_max_seconds: float = Field(chunk_limits.MAX_SECONDS, gt=0)
    overlap_seconds: float = Field(chunk_limits.OVERLAP_SECONDS, ge=0)
    # Speech detection by the Silero VAD model (whisperfarm/speech.py): cut where nobody
    # speaks, send no chunk without speech, drop words placed away from speech. Off: by
    # loudness alone, as before.
    vad: bool = True
    # How chunk audio is stored and sent to workers (worker/audio.py, farm.chunk_format_for):
    # opus (Ogg, 24 kbit/s: about 11 MB per audio hour against WAV's 115 MB), flac
    # (lossless, about 70 MB), wav; auto: opus where chunks cross a network (Fly, or
    # --workers 0), wav where only this machine's workers fetch them.
    chunk_format: ChunkFormat | Literal["auto"] = "auto"

    # Fly fleet
    backend: Literal["local", "fly"] = "local"
    speed: float | None = Field(None, gt=0)  # × realtime per CPU; default: policy's table
    fly_start_latency: float = Field(45.0, ge=0)
    fly_stop_margin: float = Field(30.0, ge=0)
    fly_poll_seconds: float = Field(2.0, gt=0)
    fly_start_timeout: float = Field(300.0, gt=0)
    fly_give_up_seconds: float = Field(300.0, gt=0)
    fly_worker_give_up_seconds: float = Field(60.0, gt=0)
    # Reachability first (fly/reach.py): a machine's worker must reach the coordinator
    # this long after the machine runs; this many unreached machines in a row end the run.
    fly_reach_timeout: float = Field(90.0, gt=0)
    fly_unreached_limit: int = Field(3, ge=1)
    # The worker image unpacked, in GB: what a stopped pool machine is billed for. The
    # Machines API does not say; 2 GB is the Dockerfile's small.en image, about.
    fly_rootfs_gb: float = Field(2.0, gt=0)
    fly_api_token: SecretStr | None = Field(
        None,
        # Environment names match case-insensitively, so the field's own name goes last:
        # first it would match FLY_API_TOKEN ahead of the others.
        validation_alias=AliasChoices(
            "WHISPERFARM_FLY_API_TOKEN", "FLY_ACCESS_TOKEN", "FLY_API_TOKEN", "fly_api_token"
        ),
    )
    fly_app: str | None = Field(
        None, validation_alias=AliasChoices("WHISPERFARM_FLY_APP", "FLY_APP", "fly_app")
    )
    fly_api_url: str = Field(
        DEFAULT_FLY_API_URL,
        validation_alias=AliasChoices(
            "WHISPERFARM_FLY_API_URL", "FLY_FLAPS_BASE_URL", "fly_api_url"
        ),
    )
    machine_size: str | None = None
    region: str | None = None
    image: str | None = None
    max_machines: int = Field(10, ge=1)
    budget: float | None = Field(None, ge=0)
    advertise_url: str | None = None
    prices: dict[str, float] = Field(default_factory=dict)

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _karaoke_needs_words(self) -> Settings:
        """Highlighting words needs their timings: asking for it turns them on, unless
        they were turned off on purpose (openai-whisper refuses that pair too)."""
        if self.highlight_words and not self.word_timestamps:
            if "word_timestamps" in self.model_fields_set:
                # not a ValueError: pydantic would wrap it in its own report
                raise UsageError(
                    "--highlight-words needs word timestamps: drop --no-words "
                    "(or word_timestamps = false), or drop --highlight-words"
                )
            self.word_timestamps = True
        return self

    def checked_for_transcription(self) -> Settings:
        """These settings, with a language given by name turned into its code; refuses a
        language the model can't take, or translating with an English-only model.
        ``transcribe`` and ``serve`` call it before any work starts. Not a validator: a
        config file's language must not stop ``status`` or ``export``, which load the
        default model with it."""
        language = language_code(self.language, self.model)
        if self.task == "translate" and english_only(self.model):
            raise UsageError(
                f"--task translate needs a multilingual model: {self.model} is English-only "
                "(it can only transcribe English); use e.g. -m small or -m large-v3-turbo"
            )
        return self.model_copy(update={"language": language})

    def decoding(self) -> Decoding:
        """The decoding options a run's episodes are transcribed with."""
        return Decoding(
            language=self.language or ("en" if english_only(self.model) else None),
            beam_size=self.beam_size,
            word_timestamps=self.word_timestamps,
            compute_type=self.compute_type,
            task=self.task,
            initial_prompt=self.initial_prompt or None,
            hotwords=self.hotwords or None,
            temperature=self.temperature,
            vad_filter=self.vad_filter,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_path())
        return (init_settings, env_settings, toml)

    # Derived locations, all under home.
    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.db"

    @property
    def episodes_dir(self) -> Path:
        return self.home / "episodes"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def cue_style(self) -> CueStyle:
        return CueStyle(
            max_line_width=self.max_line_width,
            max_line_count=self.max_line_count,
            highlight_words=self.highlight_words,
        )

    @property
    def downloads_dir(self) -> Path:
        """Inputs given as URLs or on standard input (whisperfarm/sources.py)."""
        return self.home / "downloads"


def parse_formats(value: str) -> list[str]:
    """`"srt, vtt"` → `["srt", "vtt"]`; `"all"` → every format."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    if names == ["all"]:
        return list(ALL_FORMATS)
    unknown = [name for name in names if name not in ALL_FORMATS]
    if unknown or not names:
        raise UsageError(
            f"unknown format {', '.join(unknown) or '(none)'}: "
            f"use a comma list of {', '.join(ALL_FORMATS)}, or 'all'"
        )
    return list(dict.fromkeys(names))


def load_settings(**overrides: Any) -> Settings:
    """Settings with the flags the user actually gave (``None`` means not given)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    explicit = os.environ.get("WHISPERFARM_CONFIG")
    if explicit and not config_path().is_file():
        raise UsageError(
            f"WHISPERFARM_CONFIG names {explicit}, which is no file: fix the path, or unset "
            "it to read <home>/config.toml"
        )
    try:
        return Settings(**given)
    except ValidationError as error:
        raise UsageError(_invalid(error, flags=set(given))) from error
    except ValueError as error:  # the config file is not TOML
        raise UsageError(f"invalid setting in {config_path()}: {_first_line(error)}") from error


def _invalid(error: ValidationError, *, flags: Collection[str]) -> str:
    """One line for a refused setting: where it was given (``flags``: the settings the
    command line gave; the others come from the variable or the config key), and why."""
    first = error.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, Settings.model_fields, n=1)
        hint = f": did you mean {close[0]}?" if close else ": see the README's Configuration"
        return f"unknown setting {name!r} in {config_path()}{hint}"
    if name in flags:
        where = "given on the command line"
    else:
        where = f"WHISPERFARM_{name.upper()} or {name} in the config"
    return f"invalid setting {name} ({where}): {first['msg']}, not {first['input']!r}"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])
