"""The worker image installs only requirements/worker.in (and tiny.in's model): the worker
must import nothing else, or it breaks there (ModuleNotFoundError) though every other test
passes. A worker process, in which every installed distribution outside the closure of
those requirements can't be imported (as in the image), loads the real tiny.en and
transcribes a second of audio; every module it loaded must come from the standard
library, the worker package, or that closure."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import REPO as ROOT
from whisperfarm.chunk_audio import write_chunk
from worker.audio import ChunkFormat

RUN_A_WORKER = """
import importlib.abc, json, sys
AT_START = {name.partition(".")[0] for name in sys.modules}  # site's .pth imports
BLOCKED = set(json.loads(sys.argv[1]))
class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None
sys.meta_path.insert(0, NotInTheImage())
import numpy as np
from worker.__main__ import preloaded_transcriber
from worker.config import WorkerConfig
from worker.client import CoordinatorClient
config = WorkerConfig.from_env(
    {"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t", "WHISPERFARM_MODEL": "tiny.en",
     "WHISPERFARM_THREADS": "1"}
)
transcriber = preloaded_transcriber(config)
from worker.audio import ChunkAudio, decode
opus = decode(ChunkAudio(open(sys.argv[2], "rb").read(), "audio/ogg"))  # PyAV, no ffmpeg
assert len(opus) == 16_000, len(opus)
noise = (np.random.default_rng(0).standard_normal(16_000) * 0.01).astype(np.float32)
assert transcriber.transcribe(noise, model="tiny.en").model == "tiny.en"
CoordinatorClient("http://c", "t").close()
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules} - AT_START)))
"""


def requirements(name: str) -> list[str]:
    lines = (ROOT / "requirements" / f"{name}.in").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def closure(roots: list[str]) -> set[str]:
    """The distributions ``roots`` pull in on this platform, extras left out."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in metadata.requires(name) or [])
    return seen


def test_a_working_worker_imports_only_what_its_requirements_install(tmp_path: Path) -> None:
    allowed = closure(requirements("worker") + requirements("tiny"))
    assert "typer" not in allowed and "fastapi" not in allowed  # the sets are apart
    owners = metadata.packages_distributions()
    blocked = {
        module
        for module, dists in owners.items()
        if module != "worker" and not {canonicalize_name(d) for d in dists} & allowed
    } | {"whisperfarm"}  # the CLI package: an editable install has no top-level entry
    assert {"typer", "fastapi", "rich", "imageio_ffmpeg", "whisperfarm"} <= blocked
    opus = tmp_path / "00000.opus"  # a chunk as the CLI writes it for remote workers
    tone = np.sin(np.arange(16_000) * 2 * np.pi * 300 / 16_000) * 8000
    write_chunk(opus, tone.astype(np.int16), ChunkFormat.OPUS)
    done = subprocess.run(
        [sys.executable, "-c", RUN_A_WORKER, json.dumps(sorted(blocked)), str(opus)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    outside = {
        module: owners[module]
        for module in loaded & owners.keys()
        if module != "worker" and not {canonicalize_name(d) for d in owners[module]} & allowed
    }
    assert not outside, f"the worker imports modules its image lacks: {outside}"
    assert {"worker", "faster_whisper", "ctranslate2", "httpx", "tenacity", "av"} <= loaded
