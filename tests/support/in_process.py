"""An ``httpx.Client`` whose requests go to an ASGI app in this process.

The code under test takes an ``httpx.Client`` (the Fly client, the worker's coordinator
client). Starlette's ``TestClient`` is not one: recent Starlette builds it on httpx2, a
separate package with its own types. So the tests hand the code a real ``httpx.Client``
whose transport drives the app through a ``TestClient`` and answers in httpx's types.
"""

from __future__ import annotations

import httpx
from starlette.testclient import TestClient

BASE_URL = "http://testserver"


class InProcessTransport(httpx.BaseTransport):
    """Each request, as sent, to the app behind ``app_client``; its answer, as received."""

    def __init__(self, app_client: TestClient):
        self.app_client = app_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.app_client.request(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            content=request.read(),
        )
        # The TestClient has already decoded the body: don't let httpx decode it again.
        headers = [(k, v) for k, v in answer.headers.multi_items() if k != "content-encoding"]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    def close(self) -> None:
        self.app_client.close()


def in_process(app_client: TestClient) -> httpx.Client:
    """An ``httpx.Client`` on the app behind ``app_client`` (which keeps its own default
    headers and lifespan; closing the client closes it)."""
    return httpx.Client(transport=InProcessTransport(app_client), base_url=BASE_URL)
