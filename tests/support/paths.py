"""Where the repository and its sample episode are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SAMPLE = REPO / "samples" / "episode.mp3"
SAMPLE_TEXT = REPO / "samples" / "episode.txt"
