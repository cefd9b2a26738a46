"""`whisperfarm status`: the snapshot read from the ledger, its rendering at several
widths (compared with stored snapshots), its JSON schema, and the live view's loop.

The ledger is the known state drawn in ``tests/support/farm_state.py``: a running Fly run that
is over its budget, a stale worker, a failed episode. Regenerate the stored screens after
an intended change with ``UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_status.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.support import farm_state
from tests.support.clock import FakeClock
from tests.support.farm_state import EPISODES, M1, M2, M3, NOW, PRICE
from tests.support.status_schema import check_document
from whisperfarm.cli import app
from whisperfarm.decoding import Decoding
from whisperfarm.errors import EpisodeNotFound
from whisperfarm.ledger import Ledger
from whisperfarm.status import (
    StatusReader,
    StatusSnapshot,
    machine_seconds,
    snapshot,
)
from whisperfarm.status_view import render_status, watch

SNAPSHOTS = Path(__file__).parent / "snapshots"
runner = CliRunner()


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``whisperfarm status`` takes its snapshot at NOW."""
    monkeypatch.setattr("whisperfarm.cli.status.clock", lambda: NOW)


def screen(snap: StatusSnapshot, width: int) -> str:
    console = Console(width=width, color_system=None, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_status(snap, width))
    console.file.close()
    return console.export_text()


def normalised(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def assert_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    text = normalised(text)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no stored screen {path}: run with UPDATE_SNAPSHOTS=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"screen differs from {path}"


# The snapshot --------------------------------------------------------------------------


def test_snapshot_shows_the_running_run_and_its_episodes(farm: Ledger) -> None:
    snap = snapshot(farm, NOW)
    assert [run.id for run in snap.runs] == ["r1"]
    assert [e.name for e in snap.episodes] == ["interview", "lecture", "broken"]
    interview, lecture, broken = snap.episodes
    assert (interview.chunks_done, interview.chunks_leased, interview.chunks_queued) == (6, 2, 2)
    assert interview.state == "transcribing"
    assert interview.audio_done == 180 and interview.audio_total == 300
    # 180 s of audio in the 600 s since the run started; 120 s left at that speed.
    assert interview.speed == pytest.approx(0.3)
    assert interview.eta_seconds == pytest.approx(400)
    assert lecture.state == "done" and lecture.fraction == 1.0 and lecture.eta_seconds is None
    assert broken.state == "failed" and broken.chunks_dead == 1
    assert broken.error is not None and "CUDA" in broken.error
    assert interview.chunks is None, "chunk states only when narrowed to one episode"


def test_spend_comes_from_machine_time_and_the_run_is_over_budget(farm: Ledger) -> None:
    snap = snapshot(farm, NOW)
    machines = {m.id: m for m in snap.machines}
    assert machines[M1].uptime_seconds == 590  # started, still running
    assert machines[M2].uptime_seconds == 390  # stopped 200 s ago
    assert machines[M3].uptime_seconds == 0 and machines[M3].cost_usd == 0  # never started
    assert machines[M1].cost_usd == pytest.approx(590 * PRICE)
    (run,) = snap.runs
    assert run.spent_usd == pytest.approx(980 * PRICE)
    assert run.budget_usd == 0.01 and run.over_budget
    assert (run.machines, run.machines_running, run.max_machines) == (3, 1, 3)
    # Spend moves with the clock for running machines only.
    later = snapshot(farm, NOW + 100)
    assert later.runs[0].spent_usd == pytest.approx(1080 * PRICE)


def test_episode_spend_is_the_run_cost_shared_by_audio_its_machines_did(farm: Ledger) -> None:
    snap = snapshot(farm, NOW)
    spend: dict[str, float] = {}
    for episode in snap.episodes:
        assert episode.spend_usd is not None, episode.name  # every episode here ran on Fly
        spend[episode.name] = episode.spend_usd
    total = 980 * PRICE
    assert sum(spend.values()) == pytest.approx(total)
    # m1/m2 transcribed 180 s of interview, 90 s of lecture (the laptop did 30 s) and
    # 60 s of broken.
    assert spend["interview"] == pytest.approx(total * 180 / 330)
    assert spend["lecture"] == pytest.approx(total * 90 / 330)
    assert spend["broken"] == pytest.approx(total * 60 / 330)


def test_workers_where_they_run_what_they_hold_and_staleness(farm: Ledger) -> None:
    workers = {w.id: w for w in snapshot(farm, NOW).workers}
    assert set(workers) == {M1, M2, "laptop-4242"}, "the old run's local worker is not shown"
    m1, m2, laptop = workers[M1], workers[M2], workers["laptop-4242"]
    assert (m1.where, m1.current, m1.state) == (f"fly {M1} (ams)", "interview #6", "working")
    assert m1.heartbeat_age == 5
    assert (m2.current, m2.state, m2.heartbeat_age) == ("interview #7", "stale", 400)
    assert (laptop.where, laptop.current, laptop.state) == ("laptop", None, "idle")
    assert m1.chunks_done == 9


def test_stale_threshold_follows_the_lease(farm: Ledger) -> None:
    workers = {w.id: w for w in snapshot(farm, NOW, stale_after=500).workers}
    assert workers[M2].state == "working"


def test_after_the_run_ends_silent_workers_are_gone_not_stale(
    farm: Ledger, clock: FakeClock
) -> None:
    farm.end_run("r1", "interrupted")
    snap = snapshot(farm, NOW + 3600)
    assert [r.state for r in snap.runs] == ["interrupted"]
    assert {w.state for w in snap.workers} == {"gone"}
    interview = snap.episodes[0]
    assert interview.state == "paused" and interview.eta_seconds is None
    assert interview.speed == pytest.approx(180 / 520), "speed up to its last finished chunk"


def test_a_running_run_whose_process_is_gone_shows_as_crashed(farm: Ledger) -> None:
    farm.db.conn.execute("UPDATE runs SET pid = 4242 WHERE id = 'r1'")
    snap = snapshot(farm, NOW, pid_alive=lambda pid: False)
    assert snap.runs[0].state == "crashed"
    assert snap.episodes[0].state == "paused"
    assert snapshot(farm, NOW).runs[0].state == "running", "without pid_alive: the ledger"


def test_narrowed_to_one_episode_with_its_chunk_states(farm: Ledger) -> None:
    snap = snapshot(farm, NOW, EPISODES["interview"])
    assert snap.focus == EPISODES["interview"]
    (episode,) = snap.episodes
    assert episode.chunks is not None
    states = [c.state for c in episode.chunks]
    assert states == ["done"] * 6 + ["leased", "leased", "queued", "queued"]
    assert episode.chunks[6].lease_expires_in == pytest.approx(55)
    assert episode.chunks[7].lease_expires_in == pytest.approx(-340), "expired, not reclaimed"
    assert episode.chunks[6].worker_id == M1


def test_all_episodes_and_an_explicit_scope(farm: Ledger) -> None:
    names = [e.name for e in snapshot(farm, NOW, all_episodes=True).episodes]
    assert names == ["archive", "interview", "lecture", "broken"]
    scoped = snapshot(farm, NOW, episode_ids=[EPISODES["lecture"]])
    assert [e.name for e in scoped.episodes] == ["lecture"]
    assert [r.id for r in scoped.runs] == ["r1"]


def test_with_nothing_running_the_latest_run_is_shown(farm: Ledger) -> None:
    farm.end_run("r1", "done")
    assert [r.id for r in snapshot(farm, NOW).runs] == ["r1"]


def test_unknown_episode(farm: Ledger) -> None:
    with pytest.raises(EpisodeNotFound):
        snapshot(farm, NOW, "nope")


def test_a_snapshot_reads_one_committed_state(farm: Ledger, home: Path) -> None:
    writer = Ledger(home / "ledger.db")
    interview = EPISODES["interview"]
    try:
        with farm.reading():
            before = farm.chunk_states([interview])
            writer.requeue(interview, states=("leased",))  # commits meanwhile
            assert farm.chunk_states([interview]) == before
        assert farm.chunk_states([interview]) != before
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("started", "stopped", "destroyed", "expected"),
    [
        (None, None, None, 0.0),
        (100.0, None, None, 900.0),
        (100.0, 400.0, None, 300.0),
        (100.0, None, 700.0, 600.0),
        (100.0, 400.0, 700.0, 300.0),
        (100.0, 1500.0, None, 900.0),  # a stop in the future is clamped to now
        (500.0, 400.0, None, 500.0),  # restarted after a stop: running again
    ],
)
def test_machine_seconds(
    started: float | None, stopped: float | None, destroyed: float | None, expected: float
) -> None:
    row = {"started_at": started, "stopped_at": stopped, "destroyed_at": destroyed}
    assert machine_seconds(row, 1000.0) == expected


def test_a_reader_never_creates_a_ledger(home: Path) -> None:
    reader = StatusReader(home / "ledger.db", clock=lambda: NOW)
    snap = reader.read()
    assert snap.empty and not (home / "ledger.db").exists()
    with pytest.raises(EpisodeNotFound):
        reader.resolve("x")
    reader.close()


# Rendering -----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [120, 80, 50])
def test_once_screen_matches_the_stored_one(farm: Ledger, pinned: None, width: int) -> None:
    result = runner.invoke(app, ["status", "--once"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert_snapshot(f"status_once_{width}.txt", result.output)


def test_once_screen_of_one_episode_matches_the_stored_one(farm: Ledger, pinned: None) -> None:
    result = runner.invoke(app, ["status", "interview", "--once"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert_snapshot("status_once_interview_100.txt", result.output)


def test_screen_flags_what_a_user_must_see(farm: Ledger) -> None:
    for width in (120, 80, 50, 40):
        text = screen(snapshot(farm, NOW), width)
        assert "OVER BUDGET" in text, width
        assert "stale" in text, width
        assert "interview" in text and "6/10" in text, width
        assert max(len(line) for line in text.splitlines()) <= width


def test_every_column_only_when_wide(farm: Ledger) -> None:
    snap = snapshot(farm, NOW)
    wide, narrow = screen(snap, 120), screen(snap, 50)
    for heading in ("Length", "Minutes", "Speed", "Where", "Region"):
        assert heading in wide and heading not in narrow


def test_nothing_to_show_is_one_line_and_creates_no_ledger(home: Path) -> None:
    result = runner.invoke(app, ["status", "--once"])
    assert result.exit_code == 0
    assert result.output.strip().splitlines() == [
        "Nothing to show: no runs yet. Start one with 'whisperfarm transcribe FILE'."
    ]
    assert not (home / "ledger.db").exists()


def test_unknown_episode_is_one_error_line(farm: Ledger) -> None:
    result = runner.invoke(app, ["status", "nope", "--once"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no episode 'nope'")
    assert len(result.output.strip().splitlines()) == 1


def test_an_ambiguous_id_prefix_names_the_candidates(farm: Ledger, pinned: None) -> None:
    farm_state.add_episode(farm, "1a1a00000000", "other", 1)
    result = runner.invoke(app, ["status", "1a1a", "--once"])
    assert result.exit_code == 2
    assert "1a1a1a1a1a1a" in result.output and "1a1a00000000" in result.output


# JSON ----------------------------------------------------------------------------------


def test_json_schema(farm: Ledger, pinned: None) -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    check_document(data)
    assert data["taken_at"] == NOW and data["running"] is True
    assert data["runs"][0]["over_budget"] is True
    assert [e["name"] for e in data["episodes"]] == ["interview", "lecture", "broken"]
    assert {w["id"]: w["state"] for w in data["workers"]}[M2] == "stale"
    assert data["spent_usd"] == pytest.approx(980 * PRICE)


def test_json_of_one_episode_has_its_chunks(farm: Ledger, pinned: None) -> None:
    result = runner.invoke(app, ["status", "interview", "--json"])
    data = json.loads(result.output)
    check_document(data)
    (episode,) = data["episodes"]
    assert data["focus"] == EPISODES["interview"]
    assert [c["state"] for c in episode["chunks"]].count("leased") == 2


def test_status_shows_how_an_episode_is_transcribed(farm: Ledger, pinned: None) -> None:
    options = Decoding(
        language="de", task="translate", initial_prompt="Names: Ada.", vad_filter=True
    ).options()
    farm.switch_options(EPISODES["interview"], options)
    data = json.loads(runner.invoke(app, ["status", "interview", "--json"]).output)
    (episode,) = data["episodes"]
    assert (
        episode["options"] == "de · translate · beam 5 · vad filter · int8 · prompt 'Names: Ada.'"
    )
    screen = runner.invoke(app, ["status", "interview", "--once"], env={"COLUMNS": "100"})
    assert "tiny.en · de · translate · beam 5 · vad filter" in screen.output


def test_json_with_no_ledger(home: Path) -> None:
    result = runner.invoke(app, ["status", "--json"])
    data = json.loads(result.output)
    check_document(data)
    assert data["runs"] == data["episodes"] == [] and data["running"] is False


# The live view -------------------------------------------------------------------------


def test_watch_redraws_from_fresh_snapshots_until_ctrl_c(farm: Ledger, clock: FakeClock) -> None:
    console = Console(width=100, color_system=None, record=True, force_terminal=True)
    frames: list[float] = []

    def read() -> StatusSnapshot:
        frames.append(clock())
        return snapshot(farm, clock())

    def sleep(seconds: float) -> None:
        assert seconds == 0.5
        if len(frames) == 3:
            raise KeyboardInterrupt
        clock.advance(seconds)
        if len(frames) == 2:  # between frames, m1 finishes its chunk
            job = farm.chunk(farm_state_chunk(farm, 6))
            result = json.dumps(farm_state.result_for("interview", 6))
            assert job["lease_token"] is not None
            farm.complete(job["id"], job["lease_token"], result=result)

    watch(console, read, interval=0.5, sleep=sleep)
    assert frames == [NOW, NOW + 0.5, NOW + 1.0]
    text = console.export_text()
    assert "7/10" in text, "the last frame shows the chunk finished between frames"
    assert "Ctrl-C to exit" in text


def farm_state_chunk(ledger: Ledger, idx: int) -> int:
    return next(c["id"] for c in ledger.chunks(EPISODES["interview"]) if c["idx"] == idx)
