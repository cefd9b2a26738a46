"""The coordinator's read-only status page: the picture ``whisperfarm status`` shows, for
the coordinator's own run, in a browser (phones included), refreshed every second.

    GET /                          the page; the token may come as ``?token=…`` here only
    GET /v1/status[?episode=ID]    the snapshot as JSON (``whisperfarm.status``), bearer only
    GET /v1/episodes/{id}/text     the transcript so far: fetched only when "show text" is open

The page polls rather than streaming server-sent events: EventSource cannot send the
bearer header, and an open stream would hold up the coordinator's shutdown at the end of a
run. It is one self-contained document: ``static/status.{html,css,js}`` inlined with a
fresh CSP nonce per response, so it needs no CDN and serves no unauthenticated assets.
"""

from __future__ import annotations

import secrets
import time
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import HTMLResponse

from whisperfarm.assembly import text_so_far
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.status import snapshot

PRIVATE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _template() -> str:
    static = resources.files("whisperfarm") / "static"
    return (
        (static / "status.html")
        .read_text(encoding="utf-8")
        .replace("{{style}}", (static / "status.css").read_text(encoding="utf-8"))
        .replace("{{script}}", (static / "status.js").read_text(encoding="utf-8"))
    )


def page_html(nonce: str) -> str:
    return _template().replace("{{nonce}}", nonce)


def status_router(config: CoordinatorConfig) -> APIRouter:
    """The page's routes; ``create_app`` mounts them behind its token check."""
    router = APIRouter()

    def now() -> float:
        return config.clock() if config.clock else time.time()

    def in_scope(episode_id: str) -> str:
        if episode_id not in config.scope():
            raise HTTPException(404, f"no episode {episode_id} in this run")
        return episode_id

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return HTMLResponse(
            page_html(nonce),
            headers={**PRIVATE, "Content-Security-Policy": policy, "X-Frame-Options": "DENY"},
        )

    @router.get("/v1/status")
    def status(response: Response, episode: str | None = None) -> dict[str, Any]:
        response.headers.update(PRIVATE)
        shot = snapshot(
            config.ledger(),
            now(),
            in_scope(episode) if episode else None,
            episode_ids=config.scope(),
            stale_after=config.lease_seconds,
        )
        return shot.to_dict()

    @router.get("/v1/episodes/{episode_id}/text")
    def text(episode_id: str, response: Response) -> dict[str, Any]:
        response.headers.update(PRIVATE)
        body, complete = text_so_far(config.ledger(), in_scope(episode_id))
        return {"episode": episode_id, "text": body, "complete": complete}

    return router
