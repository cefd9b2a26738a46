"""The two contracts between the coordinator's side and the worker: the wire messages
(worker.wire) and the worker's environment (WorkerConfig), each written and read by the
same class."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from typer.testing import CliRunner

from whisperfarm.cli import app
from worker.client import CoordinatorClient, CoordinatorError
from worker.config import ConfigError, WorkerConfig
from worker.wire import Lease, ResultModel, SegmentModel, WorkerModel

# The worker's environment ------------------------------------------------------------------


def test_a_config_written_to_the_environment_reads_back_the_same() -> None:
    written = WorkerConfig.for_worker(
        url="http://coord:8765",
        token="t",
        threads=3,
        preload_model="small.en",
        model_dir="/models",
        compute_type="float32",
        given_id="local-r1-0",
        given_kind="local",
        give_up_seconds=7.5,
    )
    env = written.to_env()
    assert all(name.startswith("WHISPERFARM_") for name in env)
    read = WorkerConfig.from_env(env)
    assert read.model_dump() == written.model_dump()
    assert (read.worker_id, read.kind) == ("local-r1-0", "local")


def test_only_the_given_fields_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config made to start a worker holds what its maker gave, never this process's own
    WHISPERFARM_* variables (a Fly machine must not get the laptop's model directory) nor
    defaults worked out here (host, cores, a worker id)."""
    monkeypatch.setenv("WHISPERFARM_MODEL_DIR", "/on/the/laptop")
    monkeypatch.setenv("WHISPERFARM_COMPUTE_TYPE", "float32")
    assert WorkerConfig.for_worker(given_id="m1-r1").to_env() == {"WHISPERFARM_WORKER_ID": "m1-r1"}
    assert WorkerConfig.for_worker(url="http://c", token="t").to_env() == {
        "WHISPERFARM_URL": "http://c",
        "WHISPERFARM_TOKEN": "t",
    }


def test_the_environment_and_a_mapping_are_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "WHISPERFARM_URL": "http://coord/",
        "WHISPERFARM_TOKEN": "t",
        "WHISPERFARM_THREADS": "2",
        "WHISPERFARM_MODEL": "",  # empty counts as unset
        "WHISPERFARM_HOST": "0.0.0.0",  # the coordinator's, not the worker's host
        "FLY_MACHINE_ID": "e784",
    }
    for name in os.environ:
        if name.startswith(("WHISPERFARM_", "FLY_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_process = WorkerConfig.from_env()
    assert from_process.model_dump() == WorkerConfig.from_env(env).model_dump()
    assert (from_process.url, from_process.threads) == ("http://coord", 2)
    assert from_process.preload_model is None
    assert (from_process.worker_id, from_process.kind) == ("e784", "fly")
    assert from_process.host != "0.0.0.0"

    monkeypatch.setenv("WHISPERFARM_THREADS", "many")
    for read in (lambda: WorkerConfig.from_env(), lambda: WorkerConfig.from_env(dict(os.environ))):
        with pytest.raises(ConfigError, match=r"^bad number in the environment: ") as raised:
            read()
        assert str(raised.value).endswith("WHISPERFARM_THREADS='many'")


def test_the_token_is_not_in_the_configs_repr() -> None:
    config = WorkerConfig.from_env({"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "s3cret"})
    assert "s3cret" not in repr(config)


def test_the_worker_command_hands_its_flags_to_the_worker_without_touching_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags beat the environment, which still gives the rest; the CLI's own process
    environment is left as it was."""
    for name in ("WHISPERFARM_URL", "WHISPERFARM_TOKEN", "WHISPERFARM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WHISPERFARM_MODEL", "base.en")
    monkeypatch.setenv("WHISPERFARM_MODEL_DIR", "/models")
    seen: dict[str, object] = {}

    def fake_main(env: dict[str, str] | None = None) -> int:
        seen["os.environ"] = {
            k: os.environ.get(k) for k in ("WHISPERFARM_URL", "WHISPERFARM_TOKEN")
        }
        seen["config"] = WorkerConfig.from_env(env)
        return 0

    monkeypatch.setattr("worker.__main__.main", fake_main)
    args = ["worker", "--url", "http://c:1/", "--token", "tok", "--threads", "3"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert seen["os.environ"] == {"WHISPERFARM_URL": None, "WHISPERFARM_TOKEN": None}
    config = seen["config"]
    assert isinstance(config, WorkerConfig)
    assert (config.url, config.token, config.threads) == ("http://c:1", "tok", 3)
    assert (config.preload_model, config.model_dir) == ("base.en", "/models")

    CliRunner().invoke(app, [*args[:5], "--model", "tiny.en"], catch_exceptions=False)
    config = seen["config"]
    assert isinstance(config, WorkerConfig)
    assert config.preload_model == "tiny.en"


# The wire ----------------------------------------------------------------------------------


def recording_client(answer: object) -> tuple[CoordinatorClient, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=answer)

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://coord")
    return CoordinatorClient("http://coord", "t", http=http, sleep=lambda _: None), requests


def test_a_worker_sends_what_it_was_given_and_nothing_more() -> None:
    """Bodies carry the fields their sender set, as the hand-built dicts did: a result
    without words has no "words": null, a claim from a configured worker names all six."""
    client, requests = recording_client({"status": "stored"})
    segment = SegmentModel.model_construct(start=0.0, end=1.5, text=" hi")
    result = ResultModel.model_construct(segments=[segment], language="en", model="tiny.en")
    client.post_result(Lease(chunk_id=7, lease_token="tok"), result, 2.0)
    assert requests[0].url.path == "/v1/jobs/7/result"
    assert json.loads(requests[0].content) == {
        "lease_token": "tok",
        "result": {
            "segments": [{"start": 0.0, "end": 1.5, "text": " hi"}],
            "language": "en",
            "model": "tiny.en",
        },
        "busy_seconds": 2.0,
    }

    client, requests = recording_client({"status": "done", "retry_after": 0.0})
    config = WorkerConfig.from_env({"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t"})
    client.claim(config.info())
    worker = json.loads(requests[0].content)["worker"]
    assert set(worker) == {"id", "kind", "host", "machine_id", "region", "threads"}
    assert (worker["machine_id"], worker["kind"]) == (None, "remote")


@pytest.mark.parametrize(
    "answer", [{"status": "busy"}, {"status": "job", "job": {"chunk_id": 1}}, ["done"]]
)
def test_a_claim_answer_the_worker_cannot_read_is_a_protocol_error(answer: object) -> None:
    client, _ = recording_client(answer)
    with pytest.raises(CoordinatorError, match="run a worker image of the coordinator's"):
        client.claim(WorkerModel(id="w"))


def test_the_worker_leaves_validating_what_it_sends_to_the_coordinator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host name longer than the API takes (Linux allows 253 characters, the API 200)
    is the coordinator's to refuse (422: the worker exits 6 with its answer), not a
    ValidationError with a traceback before the worker's first claim."""
    monkeypatch.setattr("worker.config.socket.gethostname", lambda: "h" * 230)
    config = WorkerConfig.from_env({"WHISPERFARM_URL": "http://c", "WHISPERFARM_TOKEN": "t"})
    client, requests = recording_client({"status": "done", "retry_after": 0.0})
    client.claim(config.info())
    assert json.loads(requests[0].content)["worker"]["host"] == "h" * 230
