"""Which device a worker runs its model on (worker.device), without a GPU: CTranslate2's
count of CUDA devices is injected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO
from worker.__main__ import main
from worker.device import Device, DeviceError, cuda_devices, resolve


@pytest.mark.parametrize(("count", "device"), [(0, Device.CPU), (1, Device.CUDA)])
def test_auto_is_cuda_when_there_is_one(count: int, device: Device) -> None:
    assert resolve("auto", lambda: count) is device


def test_cpu_is_cpu_even_with_a_gpu() -> None:
    assert resolve("cpu", lambda: 2) is Device.CPU


def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(DeviceError, match="sees no CUDA device here") as raised:
        resolve("cuda", lambda: 0)
    assert "--device cpu" in str(raised.value)
    assert resolve("cuda", lambda: 1) is Device.CUDA


def test_an_unknown_device_names_the_choices() -> None:
    with pytest.raises(DeviceError, match="use cpu, cuda or auto"):
        resolve("tpu", lambda: 0)


def test_this_machine_counts_its_cuda_devices() -> None:
    assert cuda_devices() >= 0


def test_a_worker_asked_for_cuda_on_a_machine_without_one_exits_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.device.cuda_devices", lambda: 0)
    monkeypatch.setattr("worker.__main__.resolve", lambda device: resolve(device, lambda: 0))
    env = {"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t", "WHISPERFARM_DEVICE": "cuda"}
    assert main(env) == 2
    err = capsys.readouterr().err
    assert err.startswith("worker: --device cuda, but CTranslate2 sees no CUDA device here")
    assert "Traceback" not in err


def test_the_gpu_benchmark_runs_its_steps_on_the_cpu() -> None:
    """scripts/bench_gpu.py is for a CUDA machine, which these tests don't have; with
    ``--device cpu`` it runs the same steps (the worker's batched decode at each size, one
    faster-whisper pass), so a broken call in it fails here, not on a borrowed GPU."""
    bench = REPO / "scripts" / "bench_gpu.py"
    args = ["--device", "cpu", "--compute-type", "int8", "--sizes", "1,2", "--repeat", "1"]
    result = subprocess.run(
        [sys.executable, str(bench), *args, "--audio", str(REPO / "samples/real/fw-jfk.flac")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tiny.en int8 on cpu" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(row[-1] == "True" for row in rows), result.stdout
    assert "one faster-whisper pass over the file" in result.stdout


def test_the_gpu_benchmark_names_a_missing_audio_file(tmp_path: Path) -> None:
    """ffmpeg's verdict comes before the blocks are joined: a missing file is one line
    naming it, not numpy's 'need at least one array to concatenate'."""
    missing = tmp_path / "nowhere.mp3"
    bench = REPO / "scripts" / "bench_gpu.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--device", "cpu", "--audio", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"bench_gpu: {missing}: ffmpeg could not decode"), result.stderr
    assert "Traceback" not in result.stderr
