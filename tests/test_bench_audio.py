"""scripts/bench_audio.py: the bytes per audio hour the README's chunk-format table gives."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.paths import REPO
from worker.audio import ChunkFormat

REAL = REPO / "samples" / "real"


def bench_audio() -> ModuleType:
    path = REPO / "scripts" / "bench_audio.py"
    spec = importlib.util.spec_from_file_location("bench_audio", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bytes_sent_are_those_of_the_runs_chunks_with_speech(tmp_path: Path) -> None:
    """A run deletes its chunk audio once the episode is done: the bytes sent are counted
    from the benchmark's own cut, and only once the run is seen to have cut the same
    chunks (the benchmark crashed on the files the run had deleted)."""
    with (REAL / "clips.tsv").open(encoding="utf-8") as table:
        references = {row["file"]: row["text"] for row in csv.DictReader(table, delimiter="\t")}
    audio = tmp_path / "fw-jfk.flac"
    shutil.copy(REAL / audio.name, audio)
    audio.with_suffix(".txt").write_text(references[audio.name], encoding="utf-8")
    bench = bench_audio()

    made = bench.cut_and_write(audio, ChunkFormat.OPUS, tmp_path / "cut")
    wer, size = bench.farm_run(audio, ChunkFormat.OPUS, tmp_path / "run", made)

    files = sorted((tmp_path / "cut").iterdir())
    assert [path.suffix for path in files] == [".opus"] * len(made.plans)
    spoken = [plan.idx for plan in made.plans if plan.speech]
    assert spoken, "the clip is speech"
    assert size == sum(files[idx].stat().st_size for idx in spoken)
    assert wer < 10

    other = made._replace(plans=[replace(plan, speech=False) for plan in made.plans])
    with pytest.raises(AssertionError, match="other chunks"):
        bench.farm_run(audio, ChunkFormat.OPUS, tmp_path / "again", other)
