"""A local run of files loads no HTTP client, none of the Fly layer and no FastAPI: on 2
cores the CLI's imports are on the way to the first chunk's claim, and these cost about
0.4 s of them (httpx with an SSL context, tenacity, feedparser and the Machines API
client; FastAPI with its OpenAPI models). Each loads when a run needs it: a URL,
standard input or ``--backend fly``; the status page, its API or the docs opened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

CLIP = REPO / "samples" / "real" / "sb-spk1_snt1.flac"
NOT_FOR_LOCAL_FILES = ["httpx", "tenacity", "feedparser", "whisperfarm.fly.client", "fastapi"]

RUN = """
import json, sys
from whisperfarm.launch import main
sys.argv = ["whisperfarm", "transcribe", *sys.argv[1:]]
try:
    main()
except SystemExit as end:
    assert not end.code, end.code
print(json.dumps(sorted(name for name in json.loads(%r) if name in sys.modules)))
"""


def loaded_by_a_run(home: Path, *args: str, stdin: Path | None = None) -> list[str]:
    """Which of NOT_FOR_LOCAL_FILES ``whisperfarm transcribe ARGS`` had loaded by its end."""
    with open(stdin or "/dev/null", "rb") as source:
        done = subprocess.run(
            [sys.executable, "-c", RUN % json.dumps(NOT_FOR_LOCAL_FILES), *args],
            stdin=source,
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": "/usr/bin:/bin", "WHISPERFARM_HOME": str(home)},
            cwd=REPO,
        )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_a_local_run_of_a_file_loads_no_http_client_fly_layer_or_fastapi(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(CLIP), "-m", "tiny.en", "-o", str(out), "--format", "txt", "--quiet"]
    assert loaded_by_a_run(tmp_path / "home", *args) == []
    assert "dog" in (out / f"{CLIP.stem}.txt").read_text().lower()


def test_a_run_of_standard_input_loads_its_downloader(tmp_path: Path) -> None:
    """The probe above sees what a run loads: this one reads ``-`` through the downloads'
    cache, and httpx comes with it."""
    out = tmp_path / "out"
    args = ["-", "-m", "tiny.en", "-o", str(out), "--format", "txt", "--quiet"]
    assert "httpx" in loaded_by_a_run(tmp_path / "home", *args, stdin=CLIP)
    assert "dog" in (out / "stdin.txt").read_text().lower()
