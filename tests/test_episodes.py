"""Managing episodes: `episodes`, `export` (from stored results, no transcribing),
`retry` (re-queue failed chunks) and `remove` (ledger rows, chunk audio and results)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.support import farm_state
from tests.support.farm_state import ARCHIVE, EPISODES
from whisperfarm.cli import app
from whisperfarm.episodes import episode_dir, export, list_episodes, remove, resolve, retry
from whisperfarm.errors import EpisodeNotFound, TranscriptionFailed, UsageError
from whisperfarm.ledger import Ledger
from whisperfarm.transcripts import load_json, to_srt, to_txt

runner = CliRunner()
LECTURE = EPISODES["lecture"]
BROKEN = EPISODES["broken"]


def one_error(result: Result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# Listing ------------------------------------------------------------------------------


def test_list_episodes(farm: Ledger) -> None:
    infos = {info.name: info for info in list_episodes(farm)}
    assert list(infos) == ["archive", "interview", "lecture", "broken"]
    assert (infos["broken"].chunks_done, infos["broken"].chunks_dead) == (2, 1)
    assert infos["lecture"].state == "done" and infos["lecture"].duration == 120


def test_episodes_command_table_and_json(farm: Ledger) -> None:
    result = runner.invoke(app, ["episodes"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    broken = next(line for line in lines if "broken" in line)
    assert BROKEN in broken and "failed" in broken and "2/3 ✗1" in broken
    data = json.loads(runner.invoke(app, ["episodes", "--json"]).output)
    assert [e["name"] for e in data] == ["archive", "interview", "lecture", "broken"]
    assert data[1]["chunks_total"] == 10 and data[1]["chunks_done"] == 6


def test_episodes_with_an_empty_home_says_so_and_creates_nothing(home: Path) -> None:
    result = runner.invoke(app, ["episodes"])
    assert result.exit_code == 0
    assert "No episodes yet" in result.output
    assert not (home / "ledger.db").exists()


def test_resolve_by_id_prefix_or_name(farm: Ledger) -> None:
    assert resolve(farm, "lecture")["id"] == LECTURE
    assert resolve(farm, LECTURE[:4])["id"] == LECTURE
    with pytest.raises(EpisodeNotFound, match="whisperfarm episodes"):
        resolve(farm, "nothing-like-it")
    with pytest.raises(EpisodeNotFound):
        resolve(farm, "")
    farm_state.add_episode(farm, "2b2b00000000", "lecture", 1)
    with pytest.raises(UsageError, match="2 episodes"):
        resolve(farm, "lecture")
    assert resolve(farm, LECTURE)["id"] == LECTURE, "a full id always wins"


def test_a_name_wins_over_the_start_of_another_episodes_id(farm: Ledger) -> None:
    """An episode named "b" beside one whose id starts with "b": the name was refused as
    matching 2 episodes, depending on the ids' luck."""
    farm_state.add_episode(farm, "b51ad9753fa6", "trunc", 1)
    farm_state.add_episode(farm, "c127a4f16da1", "b", 1)
    assert resolve(farm, "b")["id"] == "c127a4f16da1"
    assert resolve(farm, "b5")["id"] == "b51ad9753fa6"
    farm_state.add_episode(farm, "d00000000000", "b", 1)
    with pytest.raises(UsageError, match=r"'b' matches 2 episodes: c127a4f16da1 .*give its id"):
        resolve(farm, "b")


# Export -------------------------------------------------------------------------------


def test_export_round_trip(farm: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "lecture", "--format", "all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == [f"lecture.{ext}" for ext in ("json", "srt", "tsv", "txt", "vtt")]
    assert "lecture →" in result.output
    # Every chunk's two segments, placed on the episode's timeline.
    transcript = load_json(out / "lecture.json")
    texts = [segment.text for segment in transcript.segments]
    assert texts == [f"lecture part {n} {end}." for n in range(4) for end in ("begins", "ends")]
    assert [s.start for s in transcript.segments[::2]] == [1.0, 31.0, 61.0, 91.0]
    assert transcript.episode["id"] == LECTURE and transcript.language == "en"
    # The other formats agree with the json read back.
    assert (out / "lecture.srt").read_text() == to_srt(transcript)
    assert (out / "lecture.txt").read_text() == to_txt(transcript)
    assert "00:01:31.000 --> " in (out / "lecture.vtt").read_text()


def test_export_again_rewrites_only_what_is_asked(farm: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = export(farm, "lecture", out, ["srt"], stem="talk")[1]
    assert files == [out / "talk.srt"]
    assert sorted(p.name for p in out.iterdir()) == ["talk.srt"]
    (out / "talk.srt").write_text("stale")
    export(farm, "lecture", out, ["srt"], stem="talk")
    # the 8 s segment as one cue, held for 7 s at most (whisperfarm.subtitles)
    assert (
        (out / "talk.srt")
        .read_text()
        .startswith("1\n00:00:01,000 --> 00:00:08,000\nlecture part 0 begins.\n")
    )


def test_export_of_an_unfinished_episode_says_what_to_do(farm: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_error(runner.invoke(app, ["export", "broken", "--out", str(out)]))
    assert "2 of 3 chunks done, 1 failed" in line and f"whisperfarm retry {BROKEN}" in line
    line = one_error(runner.invoke(app, ["export", "interview", "--out", str(out)]))
    assert "6 of 10 chunks done" in line and "whisperfarm transcribe /audio/interview.mp3" in line
    assert not out.exists()


def test_export_with_a_lost_result_points_to_retry(farm: Ledger, tmp_path: Path) -> None:
    """A chunk done without a stored result (an older ledger whose result file was gone;
    see test_ledger's migration test) fails the export with the fix, and retry re-queues
    it."""
    lost = farm.chunks(LECTURE)[2]["id"]
    with farm._write() as conn:
        conn.execute("DELETE FROM results WHERE chunk_id = ?", (lost,))
    with pytest.raises(TranscriptionFailed, match="missing"):
        export(farm, "lecture", tmp_path, ["txt"])
    result = retry(farm, "lecture")
    assert (result.failed, result.missing) == (0, 1)
    chunk = farm.chunks(LECTURE)[2]
    assert chunk["state"] == "queued" and farm.result(lost) is None
    assert farm.episode(LECTURE)["state"] == "queued"


def test_export_reads_a_stored_result_that_is_no_json_object_as_no_words(
    farm: Ledger, tmp_path: Path
) -> None:
    """The ledger gives back a result's JSON as stored, unchecked (an older ledger read its
    result files in, whatever they held): one that is not an object adds no words, like a
    chunk without speech, and the rest of the episode is exported."""
    odd = farm.chunks(LECTURE)[2]["id"]
    with farm._write() as conn:
        conn.execute("UPDATE results SET body = '[1, 2]' WHERE chunk_id = ?", (odd,))
    assert farm.result(odd) == [1, 2]
    (path,) = export(farm, "lecture", tmp_path, ["txt"])[1]
    texts = path.read_text()
    assert "lecture part 2" not in texts
    assert "lecture part 1 ends." in texts and "lecture part 3 begins." in texts


def test_unknown_episode_and_bad_format(farm: Ledger, tmp_path: Path) -> None:
    assert "no episode 'zzz'" in one_error(runner.invoke(app, ["export", "zzz"]))
    result = runner.invoke(app, ["export", "lecture", "--format", "docx", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "docx" in one_error(result)


def test_export_without_a_ledger(home: Path) -> None:
    assert "no episodes yet" in one_error(runner.invoke(app, ["export", "x"]))
    assert not (home / "ledger.db").exists()


# Retry --------------------------------------------------------------------------------


def test_retry_requeues_failed_chunks(farm: Ledger) -> None:
    result = runner.invoke(app, ["retry", "broken"])
    assert result.exit_code == 0, result.output
    assert "re-queued 1 chunk(s) of broken" in result.output
    assert "whisperfarm transcribe /audio/broken.mp3" in result.output
    episode = farm.episode(BROKEN)
    assert episode["state"] == "queued" and episode["error"] is None
    chunk = farm.chunks(BROKEN)[2]
    assert (chunk["state"], chunk["attempt"], chunk["error"]) == ("queued", 0, None)
    assert [c["state"] for c in farm.chunks(BROKEN)[:2]] == ["done", "done"], "done ones kept"
    again = runner.invoke(app, ["retry", "broken"])
    assert again.exit_code == 0 and "nothing to retry: broken has no failed chunks" in again.output


def test_retry_leaves_a_running_episodes_leases_alone(farm: Ledger) -> None:
    assert retry(farm, "interview").requeued == 0
    assert [c["state"] for c in farm.chunks(EPISODES["interview"])].count("leased") == 2


def test_retry_of_an_episode_that_failed_before_chunking(farm: Ledger) -> None:
    farm.create_episode(
        episode_id="5e5e5e5e5e5e",
        name="truncated",
        source="/audio/truncated.mp3",
        content_hash="h5",
        model="tiny.en",
        options={},
    )
    farm.update_episode("5e5e5e5e5e5e", state="failed", error="looks truncated")
    with pytest.raises(UsageError, match="before it was cut into chunks"):
        retry(farm, "truncated")


# Remove -------------------------------------------------------------------------------


def make_files(home: Path, episode_id: str) -> Path:
    base = home / "episodes" / episode_id
    (base / "chunks").mkdir(parents=True, exist_ok=True)
    (base / "chunks" / "00000.wav").write_bytes(b"RIFF")
    return base


def test_remove_deletes_rows_audio_and_results_of_that_episode_only(
    farm: Ledger, home: Path, tmp_path: Path
) -> None:
    lecture = make_files(home, LECTURE)
    archive = make_files(home, ARCHIVE)
    outside = tmp_path / "out"
    export(farm, "lecture", outside, ["txt"])
    result = runner.invoke(app, ["remove", "lecture", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"removed lecture ({LECTURE})" in result.output
    assert not lecture.exists()
    assert archive.exists() and (archive / "chunks" / "00000.wav").exists()
    assert farm.results(ARCHIVE), "the other episode keeps its results"
    assert farm.find_episodes(LECTURE) == [] and farm.chunks(LECTURE) == []
    assert farm._rows(
        "SELECT count(*) AS n FROM results r LEFT JOIN chunks c"
        " ON c.id = r.chunk_id WHERE c.id IS NULL"
    ) == [{"n": 0}]
    assert LECTURE not in farm.run_episodes("r1")
    assert (outside / "lecture.txt").exists(), "transcripts written with --out are kept"
    assert "no episode" in one_error(runner.invoke(app, ["status", "lecture"]))


def test_remove_asks_first(farm: Ledger, home: Path) -> None:
    files = make_files(home, ARCHIVE)
    result = runner.invoke(app, ["remove", "archive"], input="n\n")
    assert result.exit_code == 1
    assert "Remove archive (4d4d4d4d4d4d) with its audio chunks and results?" in result.output
    assert files.exists() and farm.find_episodes(ARCHIVE)
    result = runner.invoke(app, ["remove", "archive", "lecture"], input="y\n")
    assert result.exit_code == 0 and "their audio chunks" in result.output
    assert (
        not files.exists() and not farm.find_episodes(ARCHIVE) and not farm.find_episodes(LECTURE)
    )


def test_remove_refuses_while_a_live_run_transcribes_it(farm: Ledger, home: Path) -> None:
    farm.db.conn.execute("UPDATE runs SET pid = ? WHERE id = 'r1'", (os.getpid(),))
    files = make_files(home, LECTURE)
    line = one_error(runner.invoke(app, ["remove", "lecture", "--yes"]))
    assert "run r1" in line and "stop it first" in line
    assert files.exists() and farm.find_episodes(LECTURE)
    # Once that process is gone the run is dead, and removing works.
    remove(farm, "lecture", home / "episodes", alive=lambda pid: False)
    assert not files.exists()


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b"])
def test_episode_dir_refuses_anything_but_a_plain_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        episode_dir(tmp_path, bad)


def test_export_wraps_subtitles_as_the_flags_say(farm: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", "lecture", "-f", "srt,vtt,txt", "-o", str(out)]
    result = runner.invoke(app, [*args, "--max-line-width", "8", "--max-line-count", "1"])
    assert result.exit_code == 0, result.output
    srt = (out / "lecture.srt").read_text()
    shown = [line for line in srt.splitlines() if line and not line.isdigit() and "-->" not in line]
    assert shown and all(len(line) <= 8 for line in shown), shown
    assert " ".join(shown) == " ".join((out / "lecture.txt").read_text().split())
    vtt = (out / "lecture.vtt").read_text().splitlines()[2:]
    assert [line for line in vtt if line and "-->" not in line] == shown
    result = runner.invoke(app, [*args, "--max-line-width", "0"])
    assert result.exit_code == 2


def test_export_highlight_words_without_word_timings_says_so(farm: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_error(
        runner.invoke(app, ["export", "lecture", "--highlight-words", "-f", "srt", "-o", str(out)])
    )
    assert "no word timings to highlight in srt" in line and "--words" in line
    assert not out.exists()


def test_export_words_of_an_episode_transcribed_without_them_says_so(
    farm: Ledger, tmp_path: Path
) -> None:
    """It used to write the json and srt without words and exit 0."""
    out = tmp_path / "out"
    line = one_error(runner.invoke(app, ["export", "lecture", "--words", "-o", str(out)]))
    assert "lecture was transcribed without word timestamps" in line
    assert "--words" in line
    assert not out.exists()
    result = runner.invoke(app, ["export", "lecture", "-f", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
