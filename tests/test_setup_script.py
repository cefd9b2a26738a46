"""scripts/setup: installs once, then only when what it installs from changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
# pip's calls are logged, and fail when FAIL_PIP is set; anything else is real Python.
if [ "$1" = "-m" ]; then
  echo "$*" >> "$(dirname "$0")/../../pip-calls.log"
  [ -z "${FAIL_PIP:-}" ] || exit 1
  exit 0
fi
exec REAL_PYTHON "$@"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with scripts/setup, what it installs from, and a .venv whose python
    logs pip's calls instead of installing."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup", tmp_path / "scripts" / "setup")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "worker.in").write_text("numpy\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.replace("REAL_PYTHON", sys.executable))
    python.chmod(0o755)
    return tmp_path


def setup(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "setup"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def pip_calls(checkout: Path) -> list[str]:
    log = checkout / "pip-calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_once_then_again_only_when_its_inputs_change(checkout: Path) -> None:
    assert setup(checkout).returncode == 0
    installs = [call for call in pip_calls(checkout) if "install -e" in call]
    assert installs == ["-m pip install -e .[tiny]"]

    assert setup(checkout).returncode == 0
    assert len(pip_calls(checkout)) == 2, "an unchanged checkout installs nothing"

    (checkout / "requirements" / "worker.in").write_text("numpy>=2\n")
    assert setup(checkout).returncode == 0
    assert len(pip_calls(checkout)) == 4

    assert setup(checkout, "dev").returncode == 0
    assert pip_calls(checkout)[-1] == "-m pip install -e .[dev]"

    assert setup(checkout, "dev", SETUP_FORCE="1").returncode == 0
    assert len(pip_calls(checkout)) == 8


def test_a_failed_install_is_tried_again_next_time(checkout: Path) -> None:
    failed = setup(checkout, FAIL_PIP="1")
    assert failed.returncode == 1
    assert "setup failed" in failed.stderr
    assert setup(checkout).returncode == 0
    assert setup(checkout).returncode == 0
    assert len(pip_calls(checkout)) == 1 + 2, "the failure, then one install"
