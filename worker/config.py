"""The worker's configuration, read from environment variables only.

WHISPERFARM_URL            coordinator base URL (required), e.g. http://127.0.0.1:8765
WHISPERFARM_TOKEN          the run's bearer token (required)
WHISPERFARM_THREADS        CPU threads for the model (default: all cores)
WHISPERFARM_MODEL          model to load at start (name or directory), before the first job;
                           each job still runs the model it names
WHISPERFARM_MODEL_DIR      directory of baked-in models, one sub-directory per name
WHISPERFARM_COMPUTE_TYPE   CTranslate2 compute type (default int8)
WHISPERFARM_WORKER_ID      id shown in status (default FLY_MACHINE_ID or host-pid)
WHISPERFARM_WORKER_KIND    local | fly | remote (default fly on Fly, else remote)
WHISPERFARM_GIVE_UP_SECONDS  exit when the coordinator stays unreachable this long (120)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    token: str
    worker_id: str
    kind: str
    threads: int
    compute_type: str = "int8"
    preload_model: str | None = None
    model_dir: str | None = None
    give_up_seconds: float = 120.0
    host: str | None = None
    machine_id: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerConfig:
        url = env.get("WHISPERFARM_URL", "").rstrip("/")
        token = env.get("WHISPERFARM_TOKEN", "")
        if not url or not token:
            raise ConfigError(
                "set WHISPERFARM_URL and WHISPERFARM_TOKEN to the coordinator's URL and token "
                "(printed by 'whisperfarm transcribe' and 'whisperfarm serve')"
            )
        machine_id = env.get("FLY_MACHINE_ID") or None
        host = socket.gethostname()
        try:
            threads = int(env.get("WHISPERFARM_THREADS") or os.cpu_count() or 1)
            give_up = float(env.get("WHISPERFARM_GIVE_UP_SECONDS") or 120)
        except ValueError as error:
            raise ConfigError(f"bad number in the environment: {error}") from error
        return cls(
            url=url,
            token=token,
            worker_id=env.get("WHISPERFARM_WORKER_ID") or machine_id or f"{host}-{os.getpid()}",
            kind=env.get("WHISPERFARM_WORKER_KIND") or ("fly" if machine_id else "remote"),
            threads=max(1, threads),
            compute_type=env.get("WHISPERFARM_COMPUTE_TYPE") or "int8",
            preload_model=env.get("WHISPERFARM_MODEL") or None,
            model_dir=env.get("WHISPERFARM_MODEL_DIR") or None,
            give_up_seconds=give_up,
            host=host,
            machine_id=machine_id,
            region=env.get("FLY_REGION") or None,
        )

    def info(self) -> dict[str, object]:
        return {
            "id": self.worker_id,
            "kind": self.kind,
            "host": self.host,
            "machine_id": self.machine_id,
            "region": self.region,
            "threads": self.threads,
        }
