"""The schema of ``whisperfarm status --json`` (and the page's ``/api/status``, which is the
same document): every key, and the type of its value, at every level."""

from __future__ import annotations

from typing import Any

from whisperfarm.status import SCHEMA_VERSION

RUN_KEYS = {
    "id": str,
    "backend": str,
    "state": str,
    "url": (str, type(None)),
    "started_at": float,
    "ended_at": (float, type(None)),
    "elapsed_seconds": float,
    "episode_ids": list,
    "machines": int,
    "machines_running": int,
    "max_machines": (int, type(None)),
    "budget_usd": (float, type(None)),
    "spent_usd": float,
    "over_budget": bool,
}
EPISODE_KEYS = {
    "id": str,
    "name": str,
    "model": str,
    "state": str,
    "duration": (float, type(None)),
    "chunks_total": int,
    "chunks_done": int,
    "chunks_leased": int,
    "chunks_queued": int,
    "chunks_dead": int,
    "audio_total": float,
    "audio_done": float,
    "speed": (float, type(None)),
    "eta_seconds": (float, type(None)),
    "spend_usd": (float, type(None)),
    "error": (str, type(None)),
    "chunks": (list, type(None)),
    "options": str,
}
CHUNK_KEYS = {
    "idx": int,
    "start": float,
    "end": float,
    "state": str,
    "attempt": int,
    "worker_id": (str, type(None)),
    "lease_expires_in": (float, type(None)),
    "speech": bool,
    "error": (str, type(None)),
}
WORKER_KEYS = {
    "id": str,
    "kind": str,
    "where": str,
    "host": (str, type(None)),
    "machine_id": (str, type(None)),
    "region": (str, type(None)),
    "current": (str, type(None)),
    "current_chunk_id": (int, type(None)),
    "chunks_done": int,
    "audio_seconds": float,
    "last_seen": float,
    "heartbeat_age": float,
    "state": str,
}
MACHINE_KEYS = {
    "id": str,
    "name": str,
    "run_id": str,
    "state": str,
    "size": str,
    "region": (str, type(None)),
    "usd_per_second": float,
    "created_at": float,
    "started_at": (float, type(None)),
    "uptime_seconds": float,
    "cost_usd": float,
    "error": (str, type(None)),
}
TOP_KEYS = {
    "schema": int,
    "taken_at": float,
    "focus": (str, type(None)),
    "running": bool,
    "spent_usd": float,
    "runs": list,
    "episodes": list,
    "workers": list,
    "machines": list,
}


def check(obj: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    """``obj`` has exactly the keys of ``schema``, each value of the type it names."""
    assert set(obj) == set(schema), f"{where}: keys {sorted(set(obj) ^ set(schema))}"
    for key, kind in schema.items():
        value = obj[key]
        if kind is float or (isinstance(kind, tuple) and float in kind):
            # JSON has one number type: a whole float may come back as an int.
            kind = (*(kind if isinstance(kind, tuple) else (kind,)), int)
        assert isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool), (
            f"{where}.{key} = {value!r}"
        )


def check_document(data: dict[str, Any]) -> None:
    """A whole snapshot document, its runs, episodes (with chunks), workers and machines."""
    check(data, TOP_KEYS, "snapshot")
    assert data["schema"] == SCHEMA_VERSION
    for name, schema in (
        ("runs", RUN_KEYS),
        ("episodes", EPISODE_KEYS),
        ("workers", WORKER_KEYS),
        ("machines", MACHINE_KEYS),
    ):
        for n, item in enumerate(data[name]):
            check(item, schema, f"{name}[{n}]")
            for m, chunk in enumerate(item.get("chunks") or []):
                check(chunk, CHUNK_KEYS, f"{name}[{n}].chunks[{m}]")
