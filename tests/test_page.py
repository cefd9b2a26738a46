"""The coordinator's status page: who may see it, what it shows (and doesn't), and the
page itself rendered by a real headless browser (Debian's chromium) against a real server.

The browser test never skips: without chromium it fails, saying how to install it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.support import farm_state
from tests.support.farm_state import ARCHIVE, EPISODES, M1, NOW
from tests.support.status_schema import check_document
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.ledger import Ledger
from whisperfarm.server import BackgroundServer, bind
from whisperfarm.status import snapshot

TOKEN = "page-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INTERVIEW, LECTURE = EPISODES["interview"], EPISODES["lecture"]
SPOKEN = "lecture part 1 begins"  # words from a stored chunk result
INSTALL = "sudo apt-get install -y chromium"


@pytest.fixture
def config(home: Path, farm: Ledger) -> Iterator[CoordinatorConfig]:
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: list(EPISODES.values()),
        episodes_dir=home / "episodes",
        clock=lambda: NOW,
    )
    yield config
    config.close()


@pytest.fixture
def client(config: CoordinatorConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as client:
        yield client


# Who may see it ------------------------------------------------------------------------


def test_the_page_takes_the_token_from_its_url_or_the_header(client: TestClient) -> None:
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", params={"token": ""}).status_code == 401
    assert client.get("/", params={"token": TOKEN}).status_code == 200
    assert client.get("/", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/status"),
        ("GET", f"/v1/episodes/{LECTURE}/text"),
        ("GET", "/v1/health"),
        ("POST", "/v1/claim"),
        ("GET", "/v1/jobs/1/audio"),
    ],
)
def test_every_api_endpoint_still_needs_the_header(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path, params={"token": TOKEN})
    assert response.status_code == 401, "a token in the query opens the page only"
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_page_response_is_private_and_locked_down(client: TestClient) -> None:
    response = client.get("/", params={"token": TOKEN})
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
    assert nonce and "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert f'<script nonce="{nonce.group(1)}">' in response.text
    assert client.get("/", headers=AUTH).headers["content-security-policy"] != policy, (
        "a fresh nonce per response"
    )


def test_the_page_is_self_contained(client: TestClient) -> None:
    html = client.get("/", params={"token": TOKEN}).text
    assert "<script src" not in html and "<link" not in html
    assert not re.search(r"https?://", html), "no CDN, no external anything"
    assert TOKEN not in html, "the token stays in the URL, not in the document"
    assert "fetch(" in html and "textContent" in html


# What it shows --------------------------------------------------------------------------


def test_status_json_is_the_snapshot_of_this_run(
    client: TestClient, config: CoordinatorConfig
) -> None:
    response = client.get("/v1/status", headers=AUTH)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    data = response.json()
    check_document(data)
    expected = snapshot(
        config.ledger(), NOW, episode_ids=list(EPISODES.values()), stale_after=60.0
    ).to_dict()
    assert data == expected
    assert ARCHIVE not in {e["id"] for e in data["episodes"]}, "only this run's episodes"


def test_one_episode_of_the_run_with_its_chunks(client: TestClient) -> None:
    data = client.get("/v1/status", params={"episode": INTERVIEW}, headers=AUTH).json()
    assert data["focus"] == INTERVIEW and len(data["episodes"][0]["chunks"]) == 10
    outside = client.get("/v1/status", params={"episode": ARCHIVE}, headers=AUTH)
    assert outside.status_code == 404, "an episode of another run is not this token's to see"


def test_no_transcript_text_unless_asked(client: TestClient) -> None:
    assert SPOKEN not in client.get("/", params={"token": TOKEN}).text
    assert SPOKEN not in client.get("/v1/status", headers=AUTH).text
    text = client.get(f"/v1/episodes/{LECTURE}/text", headers=AUTH).json()
    assert text["complete"] is True and SPOKEN + "." in text["text"]
    partial = client.get(f"/v1/episodes/{INTERVIEW}/text", headers=AUTH).json()
    assert partial["complete"] is False and "interview part 5 ends." in partial["text"]
    assert "interview part 6" not in partial["text"]
    assert client.get(f"/v1/episodes/{ARCHIVE}/text", headers=AUTH).status_code == 404


# In a real browser ---------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(
            "the status page test needs a headless browser: install Debian's chromium "
            f"with `{INSTALL}` (apt-get update first on a fresh machine)",
            pytrace=False,
        )
    return found


def browse(tmp_path: Path, url: str, *extra: str, profile: str) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / profile}",
        "--window-size=420,900",
        "--virtual-time-budget=3000",
        *extra,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class Spy:
    """ASGI wrapper that records each request and, when the page asks for its status a
    second time, lets machine m1 finish chunk 6 first: the page must show the change."""

    def __init__(self, app: Any, ledger_path: Path):
        self.app = app
        self.ledger_path = ledger_path
        self.requests: list[tuple[str, str, bool]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.requests.append(
                (scope["path"], scope["query_string"].decode(), b"authorization" in headers)
            )
            if [r[0] for r in self.requests].count("/v1/status") == 2:
                self.finish_chunk_6()
        await self.app(scope, receive, send)

    def finish_chunk_6(self) -> None:
        ledger = Ledger(self.ledger_path, clock=lambda: NOW)
        try:
            chunk = next(c for c in ledger.chunks(INTERVIEW) if c["idx"] == 6)
            assert chunk["worker_id"] == M1
            result = json.dumps(farm_state.result_for("interview", 6))
            assert chunk["lease_token"] is not None
            ledger.complete(chunk["id"], chunk["lease_token"], result=result)
        finally:
            ledger.close()


@pytest.fixture
def served(config: CoordinatorConfig) -> Iterator[tuple[str, Spy]]:
    spy = Spy(create_app(config), config.ledger_path)
    server = BackgroundServer(spy, bind("127.0.0.1", 0))  # type: ignore[arg-type]
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", spy
    finally:
        server.stop()


def test_the_page_in_a_headless_browser(
    served: tuple[str, Spy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, spy = served
    dom = browse(tmp_path, f"{base}/?token={TOKEN}", "--dump-dom", profile="dom").stdout

    # The run line, with the overspend flagged.
    assert "run r1" in dom and "over budget" in dom
    # Every episode with its counts; interview's went from 6 to 7 done while the page
    # was open, so the page polled again and redrew.
    assert re.search(r'data-episode="1a1a1a1a1a1a" data-done="7" data-total="10"', dom), dom
    assert ">7/10 chunks<" in dom and ">4/4 chunks<" in dom and ">2/3 chunks<" in dom
    for name in ("interview", "lecture", "broken"):
        assert f'<span class="name">{name}</span>' in dom
    assert "CUDA out of memory" in dom
    # Workers (the stale one flagged) and machines.
    assert "⚠ 6m40s stale" in dom and "fly d8901a2b3c4d5e (ams)" in dom
    assert "performance-2x" in dom and "$0.014" in dom
    # No transcript text unless asked.
    assert SPOKEN not in dom

    statuses = [r for r in spy.requests if r[0] == "/v1/status"]
    assert len(statuses) >= 2, "the page polls"
    assert all(has_header and "token" not in query for _, query, has_header in statuses), (
        "the page sends its token as a header, never in an API URL"
    )
    assert spy.requests[0] == ("/", f"token={TOKEN}", False)

    asked = browse(tmp_path, f"{base}/?token={TOKEN}&text=1", "--dump-dom", profile="text")
    assert SPOKEN + "." in asked.stdout, "?text=1 opens every episode's transcript"

    shot = tmp_path / "status.png"
    browse(tmp_path, f"{base}/?token={TOKEN}", f"--screenshot={shot}", profile="shot")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nstatus page screenshot: {shot}")


def test_the_page_without_a_token_explains_itself(served: tuple[str, Spy], tmp_path: Path) -> None:
    base, _ = served
    dom = browse(tmp_path, f"{base}/", "--dump-dom", profile="none").stdout
    assert "missing or wrong token" in dom, "the 401 says why"
