"""Decoding options are part of what a stored result is (whisperfarm/decoding.py, m009):
changing them keeps the results made with the earlier ones, and going back reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlite_utils import Database

from tests.support.clock import FakeClock
from tests.support.results import result_object
from whisperfarm.decoding import Decoding, options_key
from whisperfarm.ingest import EpisodeRequest, register
from whisperfarm.ledger import ChunkPlan, LeaseLost, Ledger, WorkerInfo
from whisperfarm.media import AudioInfo
from whisperfarm.migrations import migrations

PLAIN = Decoding(language="en").options()
WORDS = Decoding(language="en", word_timestamps=True).options()


def request(path: Path, options: dict | None) -> EpisodeRequest:
    return EpisodeRequest(path, AudioInfo(path, 30.0, "mp3", 10), "tiny.en", options)


def transcribe_all(ledger: Ledger, episode_id: str, text: str) -> int:
    """Claim and complete every queued chunk with ``text``; returns how many."""
    done = 0
    while True:
        claim = ledger.claim([episode_id], WorkerInfo("w"), lease_seconds=60, max_attempts=3)
        if claim.job is None:
            return done
        result = {"segments": [{"start": 0, "end": 1, "text": text}], "model": "tiny.en"}
        ledger.complete(claim.job.chunk_id, claim.job.lease_token, result=json.dumps(result))
        done += 1


def texts(ledger: Ledger, episode_id: str) -> list[str]:
    results = ledger.results(episode_id)
    return [
        result_object(results[c["id"]])["segments"][0]["text"] for c in ledger.chunks(episode_id)
    ]


@pytest.fixture
def episode(ledger: Ledger, tmp_path: Path) -> tuple[Path, str]:
    audio = tmp_path / "show.mp3"
    audio.write_bytes(b"not decoded here")
    episode_id, _ = register(ledger, request(audio, PLAIN))
    cut(ledger, episode_id, tmp_path)
    ledger.finish_chunking(episode_id, duration=30.0, chunk_count=3)
    return audio, episode_id


def cut(ledger: Ledger, episode_id: str, chunks_dir: Path) -> None:
    """The episode's three chunks, as the cutter records them, with their audio files."""
    for idx in range(3):
        chunk_audio = chunks_dir / f"{idx:05d}.wav"
        chunk_audio.write_bytes(b"chunk audio")
        plan = ChunkPlan(idx, idx * 10, idx * 10 + 10, idx * 10, idx * 10 + 10)
        ledger.add_chunk(episode_id, plan, str(chunk_audio))


def test_other_options_queue_the_chunks_and_keep_the_earlier_results(
    ledger: Ledger, episode: tuple[Path, str]
) -> None:
    audio, episode_id = episode
    assert transcribe_all(ledger, episode_id, " plain") == 3

    assert register(ledger, request(audio, WORDS)) == (episode_id, False)
    assert [c["state"] for c in ledger.chunks(episode_id)] == ["queued"] * 3
    assert ledger.results(episode_id) == {}  # none made with words yet
    assert ledger.db.execute("SELECT count(*) FROM results").fetchone()[0] == 3  # kept
    assert json.loads(ledger.episode(episode_id)["options"]) == WORDS
    assert transcribe_all(ledger, episode_id, " words") == 3
    assert texts(ledger, episode_id) == [" words"] * 3

    # Back to the first options: every result is there, nothing is queued.
    register(ledger, request(audio, PLAIN))
    assert [c["state"] for c in ledger.chunks(episode_id)] == ["done"] * 3
    assert transcribe_all(ledger, episode_id, " again") == 0
    assert texts(ledger, episode_id) == [" plain"] * 3
    assert ledger.episode(episode_id)["options_key"] == options_key(PLAIN)


def test_other_options_after_the_audio_was_deleted_keep_the_earlier_results(
    ledger: Ledger, episode: tuple[Path, str], tmp_path: Path
) -> None:
    """A done episode's chunk audio is deleted (reclaim.py): other options cut the file
    again, and the chunks wait for their audio set aside, not deleted (their rows hold
    the results made with the earlier options)."""
    audio, episode_id = episode
    assert transcribe_all(ledger, episode_id, " plain") == 3
    ids = [c["id"] for c in ledger.chunks(episode_id)]
    for chunk_audio in tmp_path.glob("*.wav"):
        chunk_audio.unlink()

    assert register(ledger, request(audio, WORDS)) == (episode_id, True)  # cut it again
    assert transcribe_all(ledger, episode_id, " words") == 0, "no chunk without its audio"
    assert ledger.db.execute("SELECT count(*) FROM results").fetchone()[0] == 3  # kept
    cut(ledger, episode_id, tmp_path)  # the same cut
    assert [c["id"] for c in ledger.chunks(episode_id)] == ids
    assert transcribe_all(ledger, episode_id, " words") == 3
    assert texts(ledger, episode_id) == [" words"] * 3

    register(ledger, request(audio, PLAIN))
    assert [c["state"] for c in ledger.chunks(episode_id)] == ["done"] * 3
    assert texts(ledger, episode_id) == [" plain"] * 3


def test_an_episode_taken_from_the_queue_keeps_the_options_it_was_queued_with(
    ledger: Ledger, episode: tuple[Path, str]
) -> None:
    """serve --queue registers the queue's episodes with no options of its own: one
    queued with --words is not switched to serve's defaults (and transcribed again)."""
    audio, episode_id = episode
    register(ledger, request(audio, WORDS))
    assert transcribe_all(ledger, episode_id, " words") == 3
    assert register(ledger, request(audio, None)) == (episode_id, False)
    assert json.loads(ledger.episode(episode_id)["options"]) == WORDS
    assert [c["state"] for c in ledger.chunks(episode_id)] == ["done"] * 3


def test_switching_options_takes_the_lease_from_a_worker_of_the_old_ones(
    ledger: Ledger, episode: tuple[Path, str]
) -> None:
    audio, episode_id = episode
    claim = ledger.claim([episode_id], WorkerInfo("w"), lease_seconds=60, max_attempts=3)
    assert claim.job is not None
    register(ledger, request(audio, WORDS))
    with pytest.raises(LeaseLost):
        ledger.complete(claim.job.chunk_id, claim.job.lease_token, result="{}")


def test_options_added_later_at_their_defaults_keep_the_key_of_older_episodes() -> None:
    """Episodes recorded before --task, --initial-prompt … existed keep their results."""
    before = {"language": "en", "beam_size": 5, "word_timestamps": False, "compute_type": "int8"}
    assert Decoding(language="en").options() == before
    assert options_key(Decoding(language="en").options()) == options_key(before)
    assert options_key(Decoding(language="en", task="translate").options()) != options_key(before)
    assert options_key(Decoding(language="en", initial_prompt="Names").options()) != options_key(
        before
    )


def test_m009_keys_the_results_of_an_older_ledger_by_their_episodes_options(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "ledger.db"
    old = Database(path)
    migrations.apply(old, stop_before="m009_results_keyed_by_options")
    old.execute(
        "INSERT INTO episodes (id, name, source, content_hash, model, options, state,"
        " created_at, updated_at) VALUES ('ep1', 'ep1', 's', 'h', 'tiny.en', ?, 'done', 1, 1)",
        (json.dumps(PLAIN),),
    )
    old.execute(
        "INSERT INTO chunks (episode_id, idx, start, end, keep_start, keep_end, audio_path,"
        " state) VALUES ('ep1', 0, 0, 10, 0, 10, 'a', 'done')"
    )
    old.execute("INSERT INTO results (chunk_id, body) VALUES (1, '{\"segments\": []}')")
    old.conn.commit()
    old.close()

    ledger = Ledger(path, clock=clock)
    assert ledger.episode("ep1")["options_key"] == options_key(PLAIN)
    assert ledger.results("ep1") == {1: {"segments": []}}
    assert ledger.missing_results("ep1") == []
    ledger.close()
