"""A worker keeps freed memory for reuse (worker.memory): a block freed by one of its
threads is reused by the next allocation instead of faulting fresh pages in."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

import pytest

from worker.__main__ import main
from worker.memory import M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD, keep_freed_memory

# What CTranslate2's decoding thread does with an encoder layer's attention scores: a
# block of a few hundred MB allocated, every page written, freed; again for each layer.
ALLOCATE_THREE_TIMES = """
import json, resource, sys, threading
from worker.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
import numpy as np
faults = []
def layers():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = np.ones(50_000_000, np.float32)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=layers)
thread.start()
thread.join()
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _page_faults(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE_THREE_TIMES, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_block_is_reused_instead_of_faulted_in_again() -> None:
    kept = _page_faults("keep")
    assert kept["kept"] is True
    first, *again = kept["faults"]
    assert first > 0
    assert all(count < first / 10 for count in again), kept

    # Without it, glibc gives the block back and every allocation faults it in anew.
    default = _page_faults("default")
    first, *again = default["faults"]
    assert all(count > first / 2 for count in again), default


class FakeLibc:
    def __init__(self, answer: int):
        self.answer = answer
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_the_settings_are_one_arena_no_mmap_no_trim() -> None:
    libc = FakeLibc(1)
    assert keep_freed_memory(libc) is True
    assert dict(libc.calls) == {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}


def test_a_refused_setting_is_reported() -> None:
    assert keep_freed_memory(FakeLibc(0)) is False


def test_a_worker_keeps_freed_memory_first_thing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("worker.__main__.keep_freed_memory", lambda: calls.append("kept"))
    assert main({}) == 2  # no URL: the worker stops at its configuration
    assert calls == ["kept"]
