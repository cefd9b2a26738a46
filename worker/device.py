"""Where a worker runs its model, and what suits that device.

    --device cpu    CTranslate2 on the CPU, int8, the batch a CPU profits from
    --device cuda   an NVIDIA GPU (CUDA), float16, batches that keep it busy
    --device auto   cuda when CTranslate2 sees a CUDA device, else cpu (the default)

A worker asked for cuda on a machine without one stops at start with a message that
says so (DeviceError), before it claims any work.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class DeviceError(Exception):
    pass


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


DEFAULT_COMPUTE_TYPE = {Device.CPU: "int8", Device.CUDA: "float16"}
"""CTranslate2's compute type per device when none is set: int8 on a CPU (the fastest
there, at Whisper's accuracy), float16 on a GPU (its tensor cores)."""

DEFAULT_BATCH_SIZE = {Device.CPU: 4, Device.CUDA: 16}
"""Chunks a worker claims and decodes at once when no batch size is set. On a CPU, 4: on
2 quiet cores (scripts/bench_local.py, 2 workers) batches of 4 ended the 20-minute episode
in 38.1 s where one chunk at a time took 46.0 (the sample: 10.3 s, 11.3), same words, for
about 300 MB more per worker; 8 gained nothing more. On a GPU a batch is what keeps it
busy: 16, unmeasured here (scripts/bench_gpu.py measures it on a CUDA machine)."""


def cuda_devices() -> int:
    """CUDA devices CTranslate2 can use (0 without a GPU or a CUDA build)."""
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # no CUDA runtime at all: no GPU for this worker
        return 0


def resolve(device: str, count: Callable[[], int] = cuda_devices) -> Device:
    """The device ``device`` names (auto decided here), or DeviceError naming the fix."""
    try:
        wanted = Device(device)
    except ValueError:
        raise DeviceError(
            f"unknown device {device!r}: use cpu, cuda or auto (WHISPERFARM_DEVICE)"
        ) from None
    if wanted is Device.AUTO:
        return Device.CUDA if count() > 0 else Device.CPU
    if wanted is Device.CUDA and count() == 0:
        raise DeviceError(
            "--device cuda, but CTranslate2 sees no CUDA device here: run the worker on a "
            "machine with an NVIDIA GPU, its driver and CUDA 12 with cuDNN 9, or use --device cpu"
        )
    return wanted
