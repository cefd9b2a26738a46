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
