"""scripts/bench_local.py: the numbers the README's performance table comes from."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

REAL = REPO / "samples" / "real"


def test_files_together_are_one_job_for_each_contender(tmp_path: Path) -> None:
    """``--together``: one `whisperfarm transcribe A B`, one single pass over A then B;
    each contender's WER is over the texts in the files' order, so a text left out or put
    out of order shows."""
    with (REAL / "clips.tsv").open(encoding="utf-8") as table:
        references = {row["file"]: row["text"] for row in csv.DictReader(table, delimiter="\t")}
    audios = []
    for name in ("fw-jfk.flac", "sb-LJ050-0131.flac"):
        shutil.copy(REAL / name, tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(references[name], encoding="utf-8")
        audios += ["--audio", str(tmp_path / name)]
    bench = [sys.executable, str(REPO / "scripts" / "bench_local.py"), "--together"]
    result = subprocess.run(
        [*bench, *audios, "--repeat", "1", "--contenders", "farm-2,single"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "fw-jfk.flac + sb-LJ050-0131.flac" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    for contender in ("farm-2", "single"):
        wer = float(rows[contender][7])
        assert wer < 10, result.stdout


def test_files_together_need_their_own_names(tmp_path: Path) -> None:
    """The farm writes NAME.txt for each input and refuses two of one name: the benchmark
    says so before any contender runs, not after the single pass's rounds."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(REAL / "fw-jfk.flac", tmp_path / folder / "jfk.flac")
    bench = [sys.executable, str(REPO / "scripts" / "bench_local.py"), "--together"]
    twins = [
        "--audio",
        str(tmp_path / "a" / "jfk.flac"),
        "--audio",
        str(tmp_path / "b" / "jfk.flac"),
    ]
    result = subprocess.run(
        [*bench, *twins],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "each file needs its own name" in result.stderr
    assert "Traceback" not in result.stderr
