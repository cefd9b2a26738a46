"""``python -m worker``: join a coordinator and work until the queue is empty."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from worker.client import CoordinatorClient, CoordinatorError, Unauthorized, Unreachable
from worker.config import ConfigError, WorkerConfig
from worker.device import Device, DeviceError, resolve
from worker.loop import (
    EXIT_PROTOCOL,
    EXIT_STOPPED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    Worker,
)
from worker.memory import keep_freed_memory
from worker.models import ModelLoadError, load_model
from worker.standby import Preload, StandbyOrder, log_to, read_message
from worker.transcriber import Transcriber


def preloaded_transcriber(
    config: WorkerConfig,
    loader: Callable[..., Any] = load_model,
    *,
    device: Device = Device.CPU,
    ready: Transcriber | None = None,
) -> Transcriber:
    """The worker's transcriber on ``device``, with WHISPERFARM_MODEL loaded while the
    first chunks are cut: ``ready`` (a standby's, its model loaded ahead of the order)
    where it was made for the same threads, compute type, device and model directory,
    else a new one. Each job still runs the model it names; a job whose model this
    worker can't load fails with the reason, and the worker then leaves the farm (exit 4)."""
    compute_type = config.compute_type_on(device)
    made_for = (config.threads, compute_type, device.value, config.model_dir)
    if ready is not None and made_for == (
        ready.threads,
        ready.compute_type,
        ready.device,
        ready.model_dir,
    ):
        transcriber = ready
    else:
        transcriber = Transcriber(
            threads=config.threads,
            compute_type=compute_type,
            device=device.value,
            model_dir=config.model_dir,
            loader=loader,
        )
    if config.preload_model:
        try:
            transcriber.model(config.preload_model)
        except ModelLoadError as error:
            logging.getLogger("worker").warning("%s", error)
    return transcriber


def preload(
    given: Preload, env: Mapping[str, str], loader: Callable[..., Any] = load_model
) -> Transcriber | None:
    """A standby's transcriber with the model ``given`` names loaded (on top of ``env``),
    or None where it can't be had yet: a hub model the CLI has still to fetch (a standby
    downloads nothing), a bad value (the order will say so)."""
    keep_freed_memory()  # before CTranslate2 starts its threads (worker.memory)
    try:
        config = WorkerConfig.read({**env, **given.env})
        device = resolve(config.device)
    except (ConfigError, DeviceError):
        return None
    if not config.preload_model:
        return None
    transcriber = preloaded_transcriber(config, loader, device=device)
    # A failed load is remembered for the transcriber's life: not one to keep.
    return transcriber if transcriber.holds(config.preload_model) else None


def main(env: Mapping[str, str] | None = None, ready: Transcriber | None = None) -> int:
    """Run a worker configured by ``env`` (default: this process's environment), with
    ``ready``'s model if it suits (``preloaded_transcriber``)."""
    keep_freed_memory()  # before CTranslate2 starts its threads (worker.memory)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("worker")
    try:
        config = WorkerConfig.from_env(env)
    except ConfigError as error:
        print(f"worker: {error}", file=sys.stderr)
        return 2
    try:
        device = resolve(config.device)
    except DeviceError as error:
        print(f"worker: {error}", file=sys.stderr)
        return 2
    client = CoordinatorClient(config.url, config.token, give_up_seconds=config.give_up_seconds)
    transcriber = preloaded_transcriber(config, device=device, ready=ready)
    batch_size = config.batch_size_on(device)
    worker = Worker(
        client, transcriber, config.info(), batch_size=batch_size, prefetch=config.prefetch
    )
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    log.info(
        "worker %s (%s, %s, %d threads, batches of %d%s) joining %s",
        config.worker_id,
        device.value,
        transcriber.compute_type,
        config.threads,
        batch_size,
        ", prefetching" if config.prefetch else "",
        config.url,
    )
    try:
        return worker.run()
    except Unauthorized as error:
        log.error("%s", error)
        return EXIT_UNAUTHORIZED
    except Unreachable as error:
        if worker.stopping.is_set():  # told to stop while the coordinator didn't answer
            log.info("%s; stopped after %d chunks", error, worker.chunks_done)
            return EXIT_STOPPED
        log.error("%s", error)
        return EXIT_UNREACHABLE
    except CoordinatorError as error:
        log.error("%s", error)
        return EXIT_PROTOCOL
    finally:
        client.close()


def standby() -> int:
    """``python -m worker --standby`` (worker.standby): import everything a worker needs,
    load the model of a ``Preload`` if one comes, then wait for the order that configures
    it on standard input and work as told. An import that fails is reported in the
    ordered log, as a worker started then would."""
    try:
        import faster_whisper  # noqa: F401 - the slow import, done while the CLI starts
    except Exception:
        failed: str | None = traceback.format_exc()
    else:
        failed = None
    waiting_since = time.monotonic()
    message = read_message(sys.stdin)
    ready = None
    if isinstance(message, Preload):
        ready = preload(message, os.environ) if failed is None else None
        waiting_since = time.monotonic()
        message = read_message(sys.stdin)
    if not isinstance(message, StandbyOrder):
        return 0  # the end of its input: no order came
    log_to(message.log)
    waited = time.monotonic() - waiting_since
    loaded = f" with {ready.loaded} loaded" if ready is not None and ready.loaded else ""
    print(
        f"standby worker: ready{loaded} {waited:.2f} s before its order",
        file=sys.stderr,
        flush=True,
    )
    if failed is not None:
        print(failed, file=sys.stderr, flush=True)
        return 1
    return main({**os.environ, **message.env}, ready)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its output is flushed, without the
    interpreter's teardown: freeing the model and unloading CTranslate2, faster-whisper
    and the rest takes about 0.1 s, which a run spends waiting for its local workers to
    exit (``LocalFleet.stop``). Nothing is left to it: the coordinator client is closed,
    the batch posted or handed back, and the log flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: keep the code
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(standby() if sys.argv[1:] == ["--standby"] else main())
