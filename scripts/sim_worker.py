"""A simulated worker for scripts/bench_fleet.py: the real worker loop and coordinator client
(``worker.loop.Worker``, ``worker.client.CoordinatorClient``) with a transcriber that, instead
of decoding, sleeps the chunk's duration ÷ this machine's speed and returns one segment.

Configured like the real worker (WHISPERFARM_URL, WHISPERFARM_TOKEN, FLY_MACHINE_ID, … as
the fake Machines API sets them from the machine's config.env), plus:

    SIM_SPEED        mean × realtime of a machine (default 2.7: small.en on performance-2x)
    SIM_SPREAD       machines' speeds spread evenly over ± this fraction of the mean (0.2)
    SIM_JOIN_DELAY   seconds of boot and model load before the first claim, at most; each
                     machine draws its own between 0 and this (default 20)
    SIM_SLOW         the fraction of machines that are slow (default 0): each is drawn
                     from its id, and runs at SIM_SLOW_SPEED × its speed (default 0.25),
                     as a machine on a noisy host or with a throttled CPU would

A machine's speed and join delay are drawn from its machine id, so bench_fleet.py can
recompute them (``machine_profile``). It imports no faster_whisper: a hundred of these
fit on a small machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.client import CoordinatorClient
from worker.config import WorkerConfig
from worker.device import Device
from worker.loop import Worker
from worker.transcriber import Stopped
from worker.wire import ResultModel

SAMPLE_RATE = 16_000


def _fraction(machine_id: str, salt: str) -> float:
    """A number in [0, 1) drawn from the machine id."""
    digest = hashlib.sha256(f"{salt}:{machine_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def machine_profile(machine_id: str, env: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(speed × realtime, join delay in seconds) of a simulated machine."""
    mean = float(env.get("SIM_SPEED", "2.7"))
    spread = float(env.get("SIM_SPREAD", "0.2"))
    speed = mean * (1 - spread + 2 * spread * _fraction(machine_id, "speed"))
    if _fraction(machine_id, "slow") < float(env.get("SIM_SLOW", "0")):
        speed *= float(env.get("SIM_SLOW_SPEED", "0.25"))
    delay = float(env.get("SIM_JOIN_DELAY", "20")) * _fraction(machine_id, "join")
    return speed, delay


BATCH_COST = 0.8
"""What a batch of chunks costs against decoding them one at a time: tiny.en on one CPU
thread decoded the sample's 9 chunks in 12.0-12.6 s in batches of 3 to 9, 15.3 s one at a
time (README, performance)."""


class SleepingTranscriber:
    """Takes as long as a machine of ``speed`` would; the text is a placeholder. A batch
    takes BATCH_COST of its chunks' time one by one, all of it before any result."""

    def __init__(self, speed: float, sleep: Callable[[float], None] = time.sleep):
        self.speed = speed
        self.sleep = sleep

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        *,
        model: str,
        should_stop: Callable[[], bool] = lambda: False,
        **_: Any,
    ) -> list[ResultModel]:
        total = sum(len(audio) for audio in audios) / SAMPLE_RATE
        self._sleep(total * BATCH_COST / self.speed, should_stop)
        return [self._result(len(audio) / SAMPLE_RATE, model) for audio in audios]

    def _sleep(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if should_stop():
                raise Stopped()
            self.sleep(min(left, 0.5))

    def _result(self, duration: float, model: str) -> ResultModel:
        return ResultModel.model_validate(
            {
                "segments": [{"start": 0.0, "end": round(duration, 3), "text": " simulated"}],
                "language": "en",
                "duration": duration,
                "model": model,
                "elapsed": round(duration / self.speed, 3),
            }
        )

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        model: str,
        should_stop: Callable[[], bool] = lambda: False,
        **_: Any,
    ) -> ResultModel:
        duration = len(audio) / SAMPLE_RATE
        self._sleep(duration / self.speed, should_stop)
        return self._result(duration, model)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    config = WorkerConfig.from_env()
    speed, delay = machine_profile(config.machine_id or config.worker_id)
    client = CoordinatorClient(config.url, config.token, give_up_seconds=config.give_up_seconds)
    worker = Worker(
        client,
        SleepingTranscriber(speed),  # type: ignore[arg-type]
        config.info(),
        batch_size=config.batch_size_on(Device.CPU),  # as a CPU machine's worker claims
        prefetch=config.prefetch,
    )
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        if worker.stopping.wait(delay):  # booting and loading the model
            return 0
        return worker.run()
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
