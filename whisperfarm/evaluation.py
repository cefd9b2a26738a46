"""Word error rate against a reference transcript, for tests and benchmarks.

Needs ``jiwer`` (the ``dev`` extra)."""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Lower case, no punctuation, hyphens as spaces, single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower().replace("-", " ")).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))
