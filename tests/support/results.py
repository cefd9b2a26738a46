"""Stored chunk results as tests read them back."""

from __future__ import annotations

from typing import Any

from whisperfarm.ledger import JsonValue


def result_object(stored: JsonValue) -> dict[str, Any]:
    """A result the ledger gave back (``Ledger.result``/``results``: JSON as stored, not
    checked), asserted to be the JSON object a worker sends."""
    assert isinstance(stored, dict), stored
    return stored
