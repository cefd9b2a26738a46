"""Fuzzing the coordinator API from its own OpenAPI schema (schemathesis), in-process.

Every operation gets generated requests, valid and invalid, with the run's bearer token, over
a ledger that holds queued, leased and finished chunks. Whatever comes in, the answer is
never a 5xx: a worker treats a 5xx as an outage and retries it until it gives up, so a
request that makes the coordinator fail would stall the farm instead of being refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode

from whisperfarm.chunking import write_wav
from whisperfarm.coordinator import create_app
from whisperfarm.coordinator_config import CoordinatorConfig
from whisperfarm.ledger import ChunkPlan, Ledger, WorkerInfo
from whisperfarm.settings import ALL_FORMATS
from whisperfarm.stitch import ChunkResult, stitch
from whisperfarm.transcripts import Transcript, write_outputs
from worker.wire import ResultRequest

TOKEN = "fuzz-run-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_TOKENS = ["lease-token-one", "lease-token-two"]
"""Leased chunks' tokens: the fuzz puts them (and real chunk ids) into some generated
requests, so it reaches the code behind the fence that writes results and changes chunk
states, not only the 404 and 409 answers."""


def make_ledger(path: Path, chunks_dir: Path) -> tuple[Ledger, dict[int, str]]:
    ledger = Ledger(path)
    for episode_id in ("ep1", "ep2"):
        ledger.create_episode(
            episode_id=episode_id,
            name=episode_id,
            source=f"/src/{episode_id}.mp3",
            content_hash=f"hash-{episode_id}",
            model="tiny.en",
            options={"language": "en"},
        )
        for idx in range(4):
            wav = chunks_dir / episode_id / f"{idx:05d}.wav"
            write_wav(wav, (np.arange(16_000) % 100).astype(np.int16))
            plan = ChunkPlan(idx, idx * 1.0, idx + 1.0, idx * 1.0, idx + 1.0)
            ledger.add_chunk(episode_id, plan, str(wav))
        ledger.finish_chunking(episode_id, duration=4.0, chunk_count=4)
    # ep1: one chunk done, two leased under known tokens, one queued; ep2 stays queued and
    # outside the coordinator's scope.
    done = ledger.claim(["ep1"], WorkerInfo("w0"), lease_seconds=3600, max_attempts=3).job
    assert done is not None
    ledger.complete(done.chunk_id, done.lease_token, result='{"segments": []}')
    leased = {}
    for token in LEASE_TOKENS:
        job = ledger.claim(["ep1"], WorkerInfo("w1"), lease_seconds=3600, max_attempts=3).job
        assert job is not None
        with ledger._write() as conn:
            conn.execute("UPDATE chunks SET lease_token = ? WHERE id = ?", (token, job.chunk_id))
        leased[job.chunk_id] = token
    return ledger, leased


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Any, dict[int, str]]]:
    """The schema loaded from the app (calls go to the app in-process), and the leased
    chunks' ids and tokens."""
    home = tmp_path / "home"
    ledger, leased = make_ledger(home / "ledger.db", home / "episodes" / "chunks")
    config = CoordinatorConfig(
        ledger_path=home / "ledger.db",
        token=TOKEN,
        scope=lambda: ["ep1"],
        episodes_dir=home / "episodes",
        lease_seconds=3600,
    )
    app = create_app(config)
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH), leased
    config.close()
    integrity = ledger.db.conn.execute("PRAGMA integrity_check").fetchone()[0]
    ledger.close()
    assert integrity == "ok"


def aim_at_real_jobs(case: Any, data: st.DataObject, leased: dict[int, str]) -> None:
    """Half the time, swap the generated job id and lease token for a leased chunk's."""
    params = case.path_parameters or {}
    if "episode_id" in params and data.draw(st.booleans()):
        params["episode_id"] = data.draw(st.sampled_from(["ep1", "ep2"]))
    if "chunk_id" not in params or not data.draw(st.booleans()):
        return
    chunk_id = data.draw(st.sampled_from(sorted(leased)))
    params["chunk_id"] = chunk_id
    if isinstance(case.body, dict) and "lease_token" in case.body:
        case.body["lease_token"] = leased[chunk_id]
        result = case.body.get("result")
        if isinstance(result, dict) and "model" in result and data.draw(st.booleans()):
            result["model"] = "tiny.en"  # the episode's: past the model check too
    case.headers = {**(case.headers or {}), "X-Lease-Token": leased[chunk_id]}


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation the app documents, from a throwaway config."""
    config = CoordinatorConfig(
        ledger_path=Path("unused.db"), token=TOKEN, scope=list, episodes_dir=Path("unused")
    )
    spec = create_app(config).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


@pytest.mark.parametrize(("method", "path"), operations(), ids=lambda v: v)
def test_no_generated_request_gets_a_server_error(
    api: tuple[Any, dict[int, str]], method: str, path: str
) -> None:
    schema, leased = api
    operation = schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    statuses: list[int] = []

    @given(case=cases, data=st.data())
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any, data: st.DataObject) -> None:
        aim_at_real_jobs(case, data, leased)
        response = case.call(headers=AUTH)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        assert response.status_code != 401, "the fuzz must get past the token check"

    fuzz()
    assert statuses, "no request was generated"
    if "{chunk_id}" in path:
        assert 200 in statuses, "some requests got past the fence to a real job"


def test_any_result_the_coordinator_accepts_can_be_written_as_a_transcript(
    api: tuple[Any, dict[int, str]], tmp_path: Path
) -> None:
    """A result is stored as soon as it passes validation, and stitched into the transcript
    only at the end of the run: one that passes but can't be written would break every
    run of its episode from then on."""
    schema, _ = api
    bodies = schema["/v1/jobs/{chunk_id}/result"]["POST"].as_strategy(GenerationMode.POSITIVE)
    accepted: list[int] = []

    @given(case=bodies)
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def write(case: Any) -> None:
        try:
            request = ResultRequest.model_validate(case.body)
        except ValidationError:
            return  # refused with a 422, never stored
        accepted.append(1)
        result = request.result.model_dump(exclude_none=True)
        neighbour = {"segments": [{"start": 0.0, "end": 1.0, "text": " next"}]}
        chunks = [
            ChunkResult(0, 0.0, 20.0, 0.0, 20.0, result),
            ChunkResult(1, 18.5, 40.0, 20.0, 40.0, neighbour),
        ]
        transcript = Transcript(stitch(chunks, keep_words=True), {"name": "fuzz"}, "en")
        write_outputs(transcript, tmp_path / "out", "fuzz", list(ALL_FORMATS))

    write()
    assert len(accepted) >= 50, "the generator must produce mostly valid results"
