"""The worker's configuration: environment variables only, read and written by one class.

WHISPERFARM_URL            coordinator base URL (required), e.g. http://127.0.0.1:8765
WHISPERFARM_TOKEN          the run's bearer token (required)
WHISPERFARM_THREADS        CPU threads for the model (default: all cores)
WHISPERFARM_MODEL          model to load at start (name or directory), before the first job;
                           each job still runs the model it names
WHISPERFARM_MODEL_DIR      directory of baked-in models, one sub-directory per name
WHISPERFARM_DEVICE         cpu | cuda | auto (default auto: cuda when there is one)
WHISPERFARM_COMPUTE_TYPE   CTranslate2 compute type (default int8 on cpu, float16 on cuda)
WHISPERFARM_BATCH_SIZE     chunks claimed and decoded at once (default per device:
                           worker.device.DEFAULT_BATCH_SIZE)
WHISPERFARM_PREFETCH       1: claim the next batch and download its audio while this one
                           decodes; 0: not (default 1)
WHISPERFARM_WORKER_ID      id shown in status (default FLY_MACHINE_ID or host-pid)
WHISPERFARM_WORKER_KIND    local | fly | remote (default fly on Fly, else remote)
WHISPERFARM_GIVE_UP_SECONDS  exit when the coordinator stays unreachable this long (120)
FLY_MACHINE_ID, FLY_REGION   set by Fly on its machines; read, never written

``WorkerConfig.from_env`` reads them (the worker's ``main``); ``WorkerConfig.to_env``
writes them for a worker to be started (local workers, Fly machines, ``whisperfarm
worker``), so each name is spelled once, in a field's alias below. An empty variable
counts as unset.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.device import DEFAULT_BATCH_SIZE, DEFAULT_COMPUTE_TYPE, Device
from worker.wire import MAX_JOBS_PER_CLAIM, WorkerKind, WorkerModel

PREFIX = "WHISPERFARM_"


class ConfigError(Exception):
    pass


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from and written to the environment variable ``PREFIX + name``."""
    return Field(validation_alias=PREFIX + name, **kwargs)


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("worker_environ", default=None)


@contextmanager
def _reading(env: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(env)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


class _Variables(PydanticBaseSettingsSource):
    """The worker's variables, by exact name, from os.environ or from the mapping being
    read (from_env's, or for_worker's none); an empty one counts as unset.

    Deliberately not pydantic-settings' own EnvSettingsSource: that one reads only
    os.environ, so it could neither read a mapping handed to from_env (tests, the
    ``whisperfarm worker`` command's flags) nor leave this process's environment out of
    a config written for another worker (a Fly machine must not get the laptop's
    WHISPERFARM_MODEL_DIR)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        given = _ENVIRON.get()
        env = os.environ if given is None else given
        return {name: value for name in ALIASES if (value := env.get(name))}


class WorkerConfig(BaseSettings):
    # Every field names its variable (its alias, PREFIX + a name) rather than leaning on
    # env_prefix: three of them aren't PREFIX + the field's name, and to_env writes them.
    model_config = SettingsConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,  # for_worker's fields by name, the environment's by alias
    )

    url: str = _env("URL", default="")
    token: str = _env("TOKEN", default="", repr=False)
    threads: int = _env("THREADS", default_factory=lambda: os.cpu_count() or 1)
    preload_model: str | None = _env("MODEL", default=None)
    model_dir: str | None = _env("MODEL_DIR", default=None)
    device: str = _env("DEVICE", default=Device.AUTO.value)
    compute_type: str | None = _env("COMPUTE_TYPE", default=None)
    batch_size: int | None = _env("BATCH_SIZE", default=None, ge=1, le=MAX_JOBS_PER_CLAIM)
    prefetch: bool = _env("PREFETCH", default=True)
    given_id: str | None = _env("WORKER_ID", default=None)
    given_kind: str | None = _env("WORKER_KIND", default=None)
    give_up_seconds: float = _env("GIVE_UP_SECONDS", default=120.0)
    # Fly sets these on its machines: read, never written.
    machine_id: str | None = Field(default=None, validation_alias="FLY_MACHINE_ID", exclude=True)
    region: str | None = Field(default=None, validation_alias="FLY_REGION", exclude=True)
    # Not a field: pydantic-settings would read it from WHISPERFARM_HOST, the coordinator's.
    _host: str = PrivateAttr(default_factory=lambda: socket.gethostname())

    @field_validator("url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("threads")
    @classmethod
    def _at_least_one(cls, threads: int) -> int:
        return max(1, threads)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Variables(settings_cls)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """The configuration in ``env`` (default: this process's environment), or
        ConfigError naming what to set."""
        config = cls.read(env)
        if not config.url or not config.token:
            raise ConfigError(
                "set WHISPERFARM_URL and WHISPERFARM_TOKEN to the coordinator's URL and token "
                "(printed by 'whisperfarm transcribe' and 'whisperfarm serve')"
            )
        parts = urlsplit(config.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"coordinator URL {config.url!r} is not an http(s) URL: give it as "
                "'whisperfarm transcribe' or 'serve' printed it, e.g. http://10.0.0.5:8765"
            )
        return config

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """What ``env`` sets, with or without a coordinator to join (a standby worker
        reads its model's part ahead of its order), or ConfigError for a bad value."""
        try:
            with _reading(os.environ if env is None else env):
                return cls()
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            raise ConfigError(
                f"bad number in the environment: {first['loc'][0]}={first['input']!r}"
            ) from None

    @classmethod
    def for_worker(cls, **fields: Any) -> WorkerConfig:
        """A configuration for a worker this process starts (to_env), made of ``fields``
        only, never of this process's own environment (which ``cls()`` would read)."""
        with _reading({}):
            return cls(**fields)

    def to_env(self) -> dict[str, str]:
        """The environment variables of the fields that were given, as strings."""
        dumped = self.model_dump(exclude_unset=True)
        return {ALIASES_OF[name]: str(value) for name, value in dumped.items()}

    def compute_type_on(self, device: Device) -> str:
        """The compute type set, else the device's (DEFAULT_COMPUTE_TYPE)."""
        return self.compute_type or DEFAULT_COMPUTE_TYPE[device]

    def batch_size_on(self, device: Device) -> int:
        """The batch size set, else the device's (DEFAULT_BATCH_SIZE)."""
        return self.batch_size or DEFAULT_BATCH_SIZE[device]

    @property
    def host(self) -> str:
        return self._host

    @property
    def worker_id(self) -> str:
        return self.given_id or self.machine_id or f"{self.host}-{os.getpid()}"

    @property
    def kind(self) -> str:
        return self.given_kind or (WorkerKind.FLY if self.machine_id else WorkerKind.REMOTE)

    def info(self) -> WorkerModel:
        """Who this worker is, as a claim tells the coordinator (which validates it, like
        every body a worker sends: see worker.client)."""
        return WorkerModel.model_construct(
            id=self.worker_id,
            kind=self.kind,
            host=self.host,
            machine_id=self.machine_id,
            region=self.region,
            threads=self.threads,
        )


ALIASES_OF: dict[str, str] = {
    name: str(field.validation_alias) for name, field in WorkerConfig.model_fields.items()
}
"""Each field's environment variable."""
ALIASES = frozenset(ALIASES_OF.values())
