"""What `transcribe` prints: the page URL, progress (rich on a terminal, plain lines on a
pipe), the machines/spend line when the run has Fly machines, and the closing summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.support import farm_state
from tests.support.clock import FakeClock
from tests.support.farm_state import EPISODES, NOW, PRICE
from whisperfarm.console import RunReporter
from whisperfarm.farm import EpisodeStatus, RunSummary
from whisperfarm.ledger import EpisodeProgress, Ledger

URL, TOKEN = "http://127.0.0.1:8765", "tok-123"


@pytest.fixture
def fly_ledger(home: Path, farm: Ledger) -> Path:
    return home / "ledger.db"


@pytest.fixture
def local_ledger(home: Path, ledger: Ledger) -> Path:
    farm_state.add_episode(ledger, EPISODES["interview"], "interview", 10)
    ledger.start_run("local1", backend="local", episode_ids=[EPISODES["interview"]])
    return home / "ledger.db"


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)


def printed(console: Console) -> str:
    """What was printed on a console that writes to a StringIO."""
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def status(
    done: int, total: int = 10, state: str = "queued", name: str = "interview", **kw: Any
) -> EpisodeStatus:
    progress = EpisodeProgress(
        EPISODES["interview"],
        total=total,
        counts={"done": done, "queued": total - done},
        audio_total=total * 30.0,
        audio_done=done * 30.0,
    )
    return EpisodeStatus(EPISODES["interview"], name, state, progress, total * 30.0, **kw)


def reporter(console: Console, ledger: Path, clock: FakeClock, **kw: Any) -> RunReporter:
    return RunReporter(console, ledger_path=ledger, monotonic=clock, clock=lambda: NOW, **kw)


def test_ready_prints_the_status_page_with_its_token(local_ledger: Path, clock: FakeClock) -> None:
    console = plain_console()
    reporter(console, local_ledger, clock).coordinator_ready(URL, TOKEN, "2 local workers")
    text = printed(console)
    assert f"status page: {URL}/?token={TOKEN}" in text
    assert f"whisperfarm worker --url {URL} --token {TOKEN}" in text
    assert text.count(f"?token={TOKEN}") == 1


def test_plain_lines_with_speed_since_start_and_eta(local_ledger: Path, clock: FakeClock) -> None:
    console = plain_console()
    report = reporter(console, local_ledger, clock)
    report.coordinator_ready(URL, TOKEN, "local")
    report.update([status(4)])  # 4 chunks kept from an earlier run: not this run's speed
    clock.advance(10)
    report.update([status(5)])  # 30 s of audio in 10 s: 3× realtime, 150 s left → 0:50
    clock.advance(1)
    report.update([status(6)])  # under 5 s since the last line: not printed
    lines = printed(console).splitlines()[3:]
    assert lines == [
        "interview: 4/10 chunks, 0.0× realtime, ETA —",
        "interview: 5/10 chunks, 3.0× realtime, ETA 0:50",
    ]
    assert not any("machines" in line for line in lines), "a local run has no machines line"


def test_the_display_lists_joined_workers_with_the_local_ones(
    local_ledger: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """A worker that joined with the printed command shows up beside the local ones."""
    for worker in (farm_state.LOCAL, farm_state.LAPTOP):
        farm_state.work(ledger, clock, EPISODES["interview"], worker, at=NOW, took=1.0)
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    report = reporter(console, local_ledger, clock)
    report.coordinator_ready(URL, TOKEN, "1 local worker")
    try:
        report.update([status(2)])
    finally:
        report.close()
    assert "workers: 1 local · 1 joined (laptop)" in printed(console)


def test_plain_machines_line_when_the_run_has_machines(fly_ledger: Path, clock: FakeClock) -> None:
    console = plain_console()
    report = reporter(console, fly_ledger, clock)
    report.update([status(6, state="queued")])
    text = printed(console)
    assert (
        "machines: 1 up of 3 started (max 3) · spent $0.023 of $0.010 budget · OVER BUDGET" in text
    )
    report.close()


def test_rich_display_on_a_terminal(fly_ledger: Path, clock: FakeClock) -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    report = reporter(console, fly_ledger, clock)
    report.coordinator_ready(URL, TOKEN, "fly")
    try:
        report.update([status(6)])
        clock.advance(10)
        report.update([status(7)])
    finally:
        report.close()
    text = printed(console)
    assert "interview" in text and "7/10 chunks" in text and "3.5/5.0 min" in text
    assert "3.0× realtime" in text and "ETA 0:30" in text  # 90 s left at 3×
    assert "machines: 1 up of 3 started" in text and "OVER BUDGET" in text


def test_summary_with_cost_and_files(fly_ledger: Path, clock: FakeClock, tmp_path: Path) -> None:
    console = plain_console()
    report = reporter(console, fly_ledger, clock)
    done = status(10, state="done", files=[tmp_path / "interview.txt", tmp_path / "interview.srt"])
    report.summary(RunSummary("r1", [done], wall_seconds=75.0), tmp_path)
    lines = printed(console).splitlines()
    cost = f"${980 * PRICE:.3f}"
    assert lines[0] == (
        f"done: 1 of 1 episode(s) · 5:00 of audio in 1:15 (4.0× realtime) · "
        f"cost {cost} on 3 machines (budget $0.010)"
    )
    assert lines[1] == f"  interview → {tmp_path / 'interview.txt'}, {tmp_path / 'interview.srt'}"


def test_summary_of_a_local_run_has_no_cost(local_ledger: Path, clock: FakeClock) -> None:
    console = plain_console()
    report = reporter(console, local_ledger, clock)
    failed = status(3, state="failed", error="boom")
    report.summary(RunSummary("local1", [status(10, state="done"), failed], 12.5), Path("."))
    first = printed(console).splitlines()[0]
    assert first == "finished: 1 of 2 episode(s) · 5:00 of audio in 12.5s (24.0× realtime)"


def test_a_rerun_that_reused_every_result_says_so_not_a_speed(
    local_ledger: Path, clock: FakeClock
) -> None:
    console = plain_console()
    report = reporter(console, local_ledger, clock)
    reused = status(10, state="done", reused=status(10).progress)
    report.summary(RunSummary("local1", [reused], 0.35), Path("."))
    first = printed(console).splitlines()[0]
    assert first == (
        "done: 1 of 1 episode(s) · 5:00 of audio in 0.3s: stored results reused "
        "(10 chunk(s)), nothing transcribed"
    )


def test_a_rerun_that_reused_some_results_counts_only_the_rest_as_speed(
    local_ledger: Path, clock: FakeClock
) -> None:
    console = plain_console()
    report = reporter(console, local_ledger, clock)
    resumed = status(10, state="done", reused=status(6).progress)  # 4 × 30 s transcribed
    report.summary(RunSummary("local1", [resumed], 40.0), Path("."))
    first = printed(console).splitlines()[0]
    assert first == (
        "done: 1 of 1 episode(s) · 5:00 of audio in 40.0s "
        "(3.0× realtime, 6 chunk(s) reused from stored results)"
    )


def test_quiet_prints_nothing(fly_ledger: Path, clock: FakeClock) -> None:
    console = plain_console()
    report = reporter(console, fly_ledger, clock, quiet=True)
    report.coordinator_ready(URL, TOKEN, "fly")
    report.update([status(6)])
    report.summary(RunSummary("r1", [status(10, state="done")], 10.0), Path("."))
    assert printed(console) == ""


def test_names_and_errors_are_printed_as_they_are(local_ledger: Path, clock: FakeClock) -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    report = reporter(console, local_ledger, clock)
    report.coordinator_ready(URL, TOKEN, "local")
    try:
        report.update([status(3, name="show [live]")])
        report.episode_finished(status(3, state="failed", error="[Errno 2] no such file"))
    finally:
        report.close()
    done = status(10, state="done", name="show [live]", files=[Path("out/show [live].txt")])
    report.summary(RunSummary("local1", [done], 10.0), Path("out"))
    text = printed(console)
    assert "interview: [Errno 2] no such file" in text
    assert "  show [live] → out/show [live].txt" in text
