"""The SQLite ledger: claims, leases, fencing tokens, attempts, resume and concurrency.

Time comes from the ``clock`` fixture (a FakeClock), so lease expiry is tested by moving
the clock, never by sleeping."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from tests.support.clock import FakeClock
from tests.support.episodes import make_episode
from whisperfarm.errors import EpisodeNotFound, LedgerError
from whisperfarm.ledger import ChunkPlan, ChunkRecord, LeaseLost, Ledger, UnknownChunk, WorkerInfo
from whisperfarm.migrations import migrations

LEASE = 60.0
MAX = 3
W1 = WorkerInfo("w1")
W2 = WorkerInfo("w2")


def claim(ledger: Ledger, episodes=("ep1",), worker: WorkerInfo = W1, max_attempts: int = MAX):
    return ledger.claim(list(episodes), worker, lease_seconds=LEASE, max_attempts=max_attempts)


def chunk_by_idx(ledger: Ledger, idx: int, episode_id: str = "ep1") -> ChunkRecord:
    return next(c for c in ledger.chunks(episode_id) if c["idx"] == idx)


# Claims -------------------------------------------------------------------------------


def test_claim_hands_out_longest_chunk_first_then_by_idx(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(10.0, 20.0, 15.0, 20.0))
    order = []
    for _ in range(4):
        result = claim(ledger)
        assert result.status == "job"
        order.append(result.job.idx)
    assert order == [1, 3, 2, 0]


def test_claim_fills_the_job_and_lease_fields(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(10.0,), options={"language": "de", "beam_size": 2})
    result = claim(ledger, worker=WorkerInfo("w1", kind="local", host="box", threads=4))

    job = result.job
    assert result.status == "job"
    assert (job.episode_id, job.idx, job.start, job.end) == ("ep1", 0, 0.0, 10.0)
    assert job.attempt == 1
    assert job.model == "tiny.en"
    assert job.options == {"language": "de", "beam_size": 2}
    assert job.word_timestamps is False
    assert job.lease_expires_at == clock() + LEASE
    assert len(job.lease_token) >= 16

    row = ledger.chunk(job.chunk_id)
    assert row["state"] == "leased"
    assert row["lease_token"] == job.lease_token
    assert row["lease_expires_at"] == clock() + LEASE
    assert row["worker_id"] == "w1"
    assert row["claimed_at"] == clock()
    (worker,) = ledger.workers()
    assert (worker["id"], worker["kind"], worker["host"], worker["threads"]) == (
        "w1",
        "local",
        "box",
        4,
    )
    assert worker["current_chunk"] == job.chunk_id


def test_overlapping_chunk_asks_for_word_timestamps(ledger: Ledger) -> None:
    ledger.create_episode(
        episode_id="ep1", name="e", source="s", content_hash="h", model="m", options={}
    )
    ledger.add_chunk("ep1", ChunkPlan(0, 0.0, 21.5, 0.0, 20.0), "/a.wav")
    ledger.finish_chunking("ep1", duration=21.5, chunk_count=1)
    assert claim(ledger).job.word_timestamps is True


def test_word_timestamps_option_applies_to_every_chunk(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,), options={"word_timestamps": True})
    assert claim(ledger).job.word_timestamps is True


def test_each_claim_gets_a_distinct_token(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0, 5.0, 5.0))
    tokens = {claim(ledger).job.lease_token for _ in range(3)}
    assert len(tokens) == 3


def test_claim_only_serves_episodes_in_scope(ledger: Ledger) -> None:
    make_episode(ledger, "ep1", lengths=(5.0,))
    make_episode(ledger, "ep2", lengths=(50.0,))
    job = claim(ledger, episodes=("ep1",)).job
    assert job.episode_id == "ep1"
    assert claim(ledger, episodes=("ep1",)).status == "wait"
    assert chunk_by_idx(ledger, 0, "ep2")["state"] == "queued"
    assert claim(ledger, episodes=()).status == "done"


def test_claim_waits_while_the_episode_is_still_chunking(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(), finish=False)
    result = claim(ledger)
    assert result.status == "wait"
    assert result.job is None


def test_claim_waits_while_chunks_are_leased_and_is_done_when_all_done(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0, 6.0))
    first = claim(ledger).job
    second = claim(ledger).job
    assert claim(ledger).status == "wait"

    ledger.complete(first.chunk_id, first.lease_token, result='"/r/1.json"')
    assert claim(ledger).status == "wait"  # second is still leased

    ledger.complete(second.chunk_id, second.lease_token, result='"/r/2.json"')
    assert claim(ledger).status == "done"


def test_claim_is_done_when_every_chunk_is_done_or_dead(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0, 6.0))
    job = claim(ledger, max_attempts=1).job
    assert ledger.fail(job.chunk_id, job.lease_token, error="boom", max_attempts=1) == "dead"
    job = claim(ledger, max_attempts=1).job
    ledger.complete(job.chunk_id, job.lease_token, result='"/r.json"')
    assert claim(ledger, max_attempts=1).status == "done"


def test_silent_chunks_are_done_without_a_claim(ledger: Ledger, clock) -> None:
    ledger.create_episode(
        episode_id="ep1", name="e", source="s", content_hash="h", model="m", options={}
    )
    needs_work = ledger.add_chunk("ep1", ChunkPlan(0, 0.0, 20.0, 0.0, 20.0, speech=False), "/a")
    ledger.finish_chunking("ep1", duration=20.0, chunk_count=1)
    assert needs_work is False
    row = chunk_by_idx(ledger, 0)
    assert row["state"] == "done"
    assert row["finished_at"] == clock()
    assert ledger.result(row["id"]) is None
    assert claim(ledger).status == "done"


# Lease expiry ---------------------------------------------------------------------------


def test_expired_lease_is_claimable_again_with_next_attempt_and_new_token(
    ledger: Ledger, clock
) -> None:
    make_episode(ledger, lengths=(5.0,))
    first = claim(ledger, worker=W1).job
    clock.advance(LEASE - 1)
    assert claim(ledger, worker=W2).status == "wait"  # not expired yet

    clock.advance(2)
    second = claim(ledger, worker=W2).job
    assert second.chunk_id == first.chunk_id
    assert second.attempt == first.attempt + 1 == 2
    assert second.lease_token != first.lease_token
    assert second.lease_expires_at == clock() + LEASE
    row = ledger.chunk(first.chunk_id)
    assert row["worker_id"] == "w2"
    assert row["lease_token"] == second.lease_token


def test_expired_lease_at_max_attempts_goes_dead_on_next_claim(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    for attempt in range(1, MAX + 1):
        job = claim(ledger).job
        assert job.attempt == attempt
        clock.advance(LEASE + 1)

    assert claim(ledger).status == "done"
    row = chunk_by_idx(ledger, 0)
    assert row["state"] == "dead"
    assert row["attempt"] == MAX
    assert row["lease_token"] is None
    assert "lease expired" in (row["error"] or "")
    with pytest.raises(LeaseLost):
        ledger.complete(job.chunk_id, job.lease_token, result='"/late.json"')


def test_lease_at_max_attempts_that_has_not_expired_stays_leased(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0, 5.0))
    job = claim(ledger, max_attempts=1).job
    assert claim(ledger, max_attempts=1).status == "job"  # the other chunk
    assert claim(ledger, max_attempts=1).status == "wait"
    assert ledger.chunk(job.chunk_id)["state"] == "leased"


# Heartbeat ------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    clock.advance(40)
    expires = ledger.heartbeat(job.chunk_id, job.lease_token, lease_seconds=LEASE)
    assert expires == clock() + LEASE
    assert ledger.chunk(job.chunk_id)["lease_expires_at"] == expires

    clock.advance(LEASE - 1)  # past the original expiry, inside the extended one
    assert claim(ledger, worker=W2).status == "wait"


def test_heartbeat_never_shortens_the_lease(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    expires = ledger.heartbeat(job.chunk_id, job.lease_token, lease_seconds=5.0)
    assert expires == job.lease_expires_at
    assert ledger.chunk(job.chunk_id)["lease_expires_at"] == job.lease_expires_at


def test_heartbeat_updates_worker_last_seen(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    clock.advance(10)
    ledger.heartbeat(job.chunk_id, job.lease_token, lease_seconds=LEASE)
    assert ledger.workers()[0]["last_seen"] == clock()


def test_heartbeat_with_a_superseded_token_is_lease_lost(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    old = claim(ledger, worker=W1).job
    clock.advance(LEASE + 1)
    new = claim(ledger, worker=W2).job

    with pytest.raises(LeaseLost):
        ledger.heartbeat(old.chunk_id, old.lease_token, lease_seconds=LEASE)
    assert ledger.chunk(old.chunk_id)["lease_expires_at"] == new.lease_expires_at


def test_heartbeat_unknown_chunk(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    with pytest.raises(UnknownChunk):
        ledger.heartbeat(9999, "token", lease_seconds=LEASE)


def test_heartbeat_after_completion_is_lease_lost(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    ledger.complete(job.chunk_id, job.lease_token, result='"/r.json"')
    with pytest.raises(LeaseLost):
        ledger.heartbeat(job.chunk_id, job.lease_token, lease_seconds=LEASE)


# Complete ---------------------------------------------------------------------------------


def test_complete_stores_the_result_and_counts_for_the_worker(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(12.5,))
    job = claim(ledger).job
    clock.advance(7)
    status = ledger.complete(job.chunk_id, job.lease_token, result='"/r/0.json"', busy_seconds=6)

    assert status == "stored"
    row = ledger.chunk(job.chunk_id)
    assert row["state"] == "done"
    assert ledger.result(job.chunk_id) == "/r/0.json"
    assert row["finished_at"] == clock()
    assert row["lease_expires_at"] is None
    (worker,) = ledger.workers()
    assert worker["chunks_done"] == 1
    assert worker["audio_seconds"] == pytest.approx(12.5)
    assert worker["busy_seconds"] == pytest.approx(6)
    assert worker["current_chunk"] is None
    progress = ledger.progress("ep1")
    assert progress.done == 1
    assert progress.finished
    assert progress.audio_done == pytest.approx(12.5)


def test_repeated_complete_with_the_same_token_is_a_duplicate(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    assert ledger.complete(job.chunk_id, job.lease_token, result='"/r/a.json"') == "stored"
    again = ledger.complete(job.chunk_id, job.lease_token, result='"/r/b.json"')

    assert again == "duplicate"
    assert ledger.result(job.chunk_id) == "/r/a.json"
    assert ledger.workers()[0]["chunks_done"] == 1


def test_complete_with_a_superseded_token_is_lease_lost_and_changes_nothing(
    ledger: Ledger, clock
) -> None:
    make_episode(ledger, lengths=(5.0,))
    old = claim(ledger, worker=W1).job
    clock.advance(LEASE + 1)
    new = claim(ledger, worker=W2).job

    # the late worker posts while the new attempt still holds the lease ...
    with pytest.raises(LeaseLost):
        ledger.complete(old.chunk_id, old.lease_token, result='"/r/old.json"')
    assert ledger.chunk(old.chunk_id)["state"] == "leased"
    assert ledger.result(old.chunk_id) is None

    # ... and after the new attempt has finished
    ledger.complete(new.chunk_id, new.lease_token, result='"/r/new.json"')
    with pytest.raises(LeaseLost):
        ledger.complete(old.chunk_id, old.lease_token, result='"/r/old.json"')
    row = ledger.chunk(new.chunk_id)
    assert ledger.result(new.chunk_id) == "/r/new.json"
    assert row["state"] == "done"
    assert {w["id"]: w["chunks_done"] for w in ledger.workers()} == {"w1": 0, "w2": 1}


def test_complete_unknown_chunk(ledger: Ledger) -> None:
    with pytest.raises(UnknownChunk):
        ledger.complete(424242, "token", result='"/r.json"')


def test_complete_after_release_is_lease_lost(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    ledger.release(job.chunk_id, job.lease_token)
    with pytest.raises(LeaseLost):
        ledger.complete(job.chunk_id, job.lease_token, result='"/r.json"')
    assert ledger.chunk(job.chunk_id)["state"] == "queued"


def test_lease_holder(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    assert ledger.lease_holder(job.chunk_id, job.lease_token)["id"] == job.chunk_id
    with pytest.raises(LeaseLost):
        ledger.lease_holder(job.chunk_id, "not-the-token")
    with pytest.raises(UnknownChunk):
        ledger.lease_holder(9999, job.lease_token)


# Fail and release ---------------------------------------------------------------------


def test_fail_requeues_until_max_attempts_then_dead(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    states = []
    for attempt in range(1, MAX + 1):
        job = claim(ledger).job
        assert job.attempt == attempt
        states.append(
            ledger.fail(job.chunk_id, job.lease_token, error=f"boom {attempt}", max_attempts=MAX)
        )
        row = ledger.chunk(job.chunk_id)
        assert row["lease_token"] is None
        assert row["error"] == f"boom {attempt}"
    assert states == ["queued", "queued", "dead"]
    assert ledger.chunk(job.chunk_id)["state"] == "dead"
    assert claim(ledger).status == "done"


def test_fail_with_a_stale_token_is_lease_lost(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    old = claim(ledger).job
    clock.advance(LEASE + 1)
    new = claim(ledger, worker=W2).job
    with pytest.raises(LeaseLost):
        ledger.fail(old.chunk_id, old.lease_token, error="late", max_attempts=MAX)
    row = ledger.chunk(new.chunk_id)
    assert (row["state"], row["lease_token"], row["error"]) == ("leased", new.lease_token, None)


def test_fail_truncates_a_huge_error(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    ledger.fail(job.chunk_id, job.lease_token, error="x" * 50_000, max_attempts=MAX)
    error = ledger.chunk(job.chunk_id)["error"]
    assert error is not None and len(error) == 2000


def test_release_hands_back_without_spending_an_attempt(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    job = claim(ledger).job
    ledger.release(job.chunk_id, job.lease_token)

    row = ledger.chunk(job.chunk_id)
    assert (row["state"], row["attempt"], row["lease_token"]) == ("queued", 0, None)
    assert ledger.workers()[0]["current_chunk"] is None
    again = claim(ledger).job
    assert again.attempt == 1
    assert again.lease_token != job.lease_token


def test_releases_never_make_a_chunk_dead(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0,))
    for _ in range(MAX + 2):
        job = claim(ledger).job
        ledger.release(job.chunk_id, job.lease_token)
    job = claim(ledger).job
    assert job.attempt == 1
    assert ledger.fail(job.chunk_id, job.lease_token, error="e", max_attempts=MAX) == "queued"


def test_release_with_a_stale_token_is_lease_lost(ledger: Ledger, clock) -> None:
    make_episode(ledger, lengths=(5.0,))
    old = claim(ledger).job
    clock.advance(LEASE + 1)
    new = claim(ledger, worker=W2).job
    with pytest.raises(LeaseLost):
        ledger.release(old.chunk_id, old.lease_token)
    row = ledger.chunk(new.chunk_id)
    assert (row["state"], row["attempt"]) == ("leased", 2)


# Resume: add_chunk, finish_chunking, requeue -----------------------------------------------


def test_add_chunk_keeps_a_done_chunk_with_the_same_cut(ledger: Ledger) -> None:
    plans = make_episode(ledger, lengths=(5.0, 7.0))
    job = claim(ledger).job  # idx 1, the longer one
    ledger.complete(job.chunk_id, job.lease_token, result='"/r/1.json"')

    needs_work = ledger.add_chunk("ep1", plans[1], "/chunks/again.wav")
    assert needs_work is False
    row = chunk_by_idx(ledger, 1)
    assert row["id"] == job.chunk_id
    assert (row["state"], row["attempt"]) == ("done", 1)
    assert ledger.result(row["id"]) == "/r/1.json"
    assert row["audio_path"] == "/chunks/ep1/00001.wav"


def test_add_chunk_replaces_a_done_chunk_with_a_different_cut(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0, 7.0))
    job = claim(ledger).job  # idx 1: 5.0 .. 12.0
    ledger.complete(job.chunk_id, job.lease_token, result='"/r/1.json"')

    needs_work = ledger.add_chunk("ep1", ChunkPlan(1, 5.0, 13.0, 5.0, 13.0), "/chunks/new.wav")
    assert needs_work is True
    row = chunk_by_idx(ledger, 1)
    assert (row["state"], row["attempt"]) == ("queued", 0)
    assert ledger.result(row["id"]) is None
    assert ledger.results("ep1") == {}  # the old cut's result went with it
    assert (row["start"], row["end"], row["audio_path"]) == (5.0, 13.0, "/chunks/new.wav")
    assert len(ledger.chunks("ep1")) == 2


def test_add_chunk_requeues_an_unfinished_chunk_with_the_same_cut(ledger: Ledger) -> None:
    plans = make_episode(ledger, lengths=(5.0,))
    job = claim(ledger, max_attempts=1).job
    ledger.fail(job.chunk_id, job.lease_token, error="boom", max_attempts=1)
    assert chunk_by_idx(ledger, 0)["state"] == "dead"

    assert ledger.add_chunk("ep1", plans[0], "/chunks/x.wav") is True
    row = chunk_by_idx(ledger, 0)
    assert (row["state"], row["attempt"], row["error"]) == ("queued", 0, None)


def test_finish_chunking_drops_stale_higher_index_chunks(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(5.0, 5.0, 5.0, 5.0))
    # a rerun cut the same audio into two chunks
    ledger.update_episode("ep1", state="chunking")
    ledger.add_chunk("ep1", ChunkPlan(0, 0.0, 10.0, 0.0, 10.0), "/c/0.wav")
    ledger.add_chunk("ep1", ChunkPlan(1, 10.0, 20.0, 10.0, 20.0), "/c/1.wav")
    ledger.finish_chunking("ep1", duration=20.0, chunk_count=2)

    assert [(c["idx"], c["start"], c["end"]) for c in ledger.chunks("ep1")] == [
        (0, 0.0, 10.0),
        (1, 10.0, 20.0),
    ]
    episode = ledger.episode("ep1")
    assert (episode["state"], episode["chunk_count"], episode["duration"]) == ("queued", 2, 20.0)
    assert ledger.progress("ep1").total == 2


def test_requeue_puts_leased_and_dead_chunks_back_with_fresh_attempts(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(9.0, 8.0, 7.0))
    dead = claim(ledger, max_attempts=1).job
    ledger.fail(dead.chunk_id, dead.lease_token, error="boom", max_attempts=1)
    done = claim(ledger).job
    ledger.complete(done.chunk_id, done.lease_token, result='"/r.json"')
    leased = claim(ledger).job

    assert ledger.requeue("ep1") == 2
    for job in (dead, leased):
        row = ledger.chunk(job.chunk_id)
        assert (row["state"], row["attempt"], row["lease_token"], row["error"]) == (
            "queued",
            0,
            None,
            None,
        )
    assert ledger.chunk(done.chunk_id)["state"] == "done"
    with pytest.raises(LeaseLost):
        ledger.complete(leased.chunk_id, leased.lease_token, result='"/r/late.json"')


def test_requeue_with_done_state_redoes_finished_chunks(ledger: Ledger) -> None:
    make_episode(ledger, lengths=(9.0,))
    job = claim(ledger).job
    ledger.complete(job.chunk_id, job.lease_token, result='"/r.json"')
    assert ledger.requeue("ep1", states=("done", "leased", "dead")) == 1
    assert ledger.chunk(job.chunk_id)["state"] == "queued"
    assert claim(ledger).status == "job"


def test_requeue_leaves_other_episodes_alone(ledger: Ledger) -> None:
    make_episode(ledger, "ep1", lengths=(5.0,))
    make_episode(ledger, "ep2", lengths=(5.0,))
    job = claim(ledger, episodes=("ep2",)).job
    assert ledger.requeue("ep1") == 0
    assert ledger.chunk(job.chunk_id)["state"] == "leased"


# Episodes -----------------------------------------------------------------------------


def test_episode_lookup_and_delete(ledger: Ledger) -> None:
    make_episode(ledger, "abc123", lengths=(5.0,))
    found = ledger.find_episode("hash-abc123", "tiny.en")
    assert found is not None and found["id"] == "abc123"
    assert ledger.find_episode("hash-abc123", "small.en") is None
    assert [e["id"] for e in ledger.find_episodes("abc")] == ["abc123"]
    assert ledger.find_episodes("zzz") == []

    ledger.delete_episode("abc123")
    with pytest.raises(EpisodeNotFound, match="whisperfarm episodes"):
        ledger.episode("abc123")
    assert ledger.chunks("abc123") == []


# Migrations -------------------------------------------------------------------------------


def registered_migrations() -> list[str]:
    return [m.name for m in migrations.pending(Database(memory=True))]


def test_migrations_apply_once_and_reopen_is_idempotent(tmp_path: Path, clock) -> None:
    names = registered_migrations()
    assert names[0] == "m001_initial"
    path = tmp_path / "sub" / "ledger.db"
    first = Ledger(path, clock=clock)
    make_episode(first, lengths=(5.0,))
    applied = first._rows("SELECT migration_set, name, applied_at FROM _sqlite_migrations")
    first.close()
    assert [(row["migration_set"], row["name"]) for row in applied] == [
        ("whisperfarm", name) for name in names
    ]

    for _ in range(2):
        again = Ledger(path, clock=clock)
        rows = again._rows("SELECT migration_set, name, applied_at FROM _sqlite_migrations")
        assert rows == applied  # nothing re-applied, nothing re-recorded
        assert migrations.pending(again.db) == []
        assert again.episode("ep1")["name"] == "ep1"
        assert len(again.chunks("ep1")) == 1
        assert again._rows("PRAGMA journal_mode") == [{"journal_mode": "wal"}]
        again.close()


def test_opening_an_older_ledger_applies_only_the_missing_migrations(tmp_path: Path) -> None:
    names = registered_migrations()
    path = tmp_path / "ledger.db"
    old = Database(path)
    migrations.apply(old, stop_before=names[-1])
    before = [m.name for m in migrations.applied(old)]
    old.close()
    assert before == names[:-1]

    ledger = Ledger(path)
    assert [m.name for m in migrations.applied(ledger.db)] == names
    ledger.close()


def test_result_files_of_an_older_ledger_move_into_it(tmp_path: Path) -> None:
    """m005: a ledger from before results lived in it points at one JSON file per chunk;
    opening it reads them in, and a file that is gone leaves its chunk missing a result
    (export says so and retry re-queues it), not a broken ledger."""
    path = tmp_path / "ledger.db"
    old = Database(path)
    migrations.apply(old, stop_before="m005_results_in_the_ledger")
    now = 1_000.0
    old.execute(
        "INSERT INTO episodes (id, name, source, content_hash, model, state, created_at,"
        " updated_at) VALUES ('ep1', 'ep1', 's', 'h', 'm', 'done', ?, ?)",
        (now, now),
    )
    kept = tmp_path / "results" / "00000-1.json"
    kept.parent.mkdir()
    kept.write_text('{"segments": [{"start": 0, "end": 1, "text": " kept"}]}')
    gone = tmp_path / "results" / "00001-1.json"
    for idx, result_path in enumerate([kept, gone, None]):
        old.execute(
            "INSERT INTO chunks (episode_id, idx, start, end, keep_start, keep_end, speech,"
            " audio_path, state, attempt, result_path) VALUES ('ep1', ?, ?, ?, ?, ?, ?, 'a',"
            " 'done', 1, ?)",
            (
                idx,
                idx,
                idx + 1,
                idx,
                idx + 1,
                int(result_path is not None),
                result_path and str(result_path),
            ),
        )
    old.conn.commit()
    old.close()

    ledger = Ledger(path)
    ids = [c["id"] for c in ledger.chunks("ep1")]
    assert ledger.results("ep1") == {
        ids[0]: {"segments": [{"start": 0, "end": 1, "text": " kept"}]}
    }
    assert [c["idx"] for c in ledger.missing_results("ep1")] == [1]  # idx 2 is silent
    ledger.close()


def test_a_file_that_is_not_sqlite_gives_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="WHISPERFARM_HOME"):
        Ledger(path)


# Concurrency ------------------------------------------------------------------------------


def test_concurrent_claims_hand_out_every_chunk_exactly_once(tmp_path: Path, clock) -> None:
    path = tmp_path / "ledger.db"
    setup = Ledger(path, clock=clock)
    make_episode(setup, lengths=tuple(float(1 + i % 7) for i in range(300)))

    claimed: list[list[tuple[int, int]]] = [[] for _ in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        ledger = Ledger(path, clock=clock)
        worker = WorkerInfo(f"t{n}")
        try:
            start.wait()
            while True:
                result = claim(ledger, worker=worker)
                if result.status == "done":
                    return
                if result.status == "wait":
                    continue
                job = result.job
                claimed[n].append((job.chunk_id, job.attempt))
                result = json.dumps(f"/r/{job.idx}")
                ledger.complete(job.chunk_id, job.lease_token, result=result)
        except BaseException as error:
            errors.append(error)
        finally:
            ledger.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    every = [chunk_id for per_thread in claimed for chunk_id, _ in per_thread]
    assert len(every) == 300
    assert len(set(every)) == 300
    assert {attempt for per_thread in claimed for _, attempt in per_thread} == {1}
    assert sum(1 for per_thread in claimed if per_thread) > 1  # really shared out
    progress = setup.progress("ep1")
    assert progress.counts == {"done": 300}
    assert sum(w["chunks_done"] for w in setup.workers()) == 300
    setup.close()


def test_concurrent_first_opens_of_a_fresh_ledger_all_succeed(tmp_path: Path) -> None:
    """Two processes (say `transcribe` and `status`) opening a brand-new home at once must
    not both try to apply the migrations."""
    names = registered_migrations()
    for attempt in range(5):
        path = tmp_path / f"fresh-{attempt}" / "ledger.db"
        gate = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path,
            gate: threading.Barrier = gate,
            errors: list[BaseException] = errors,
        ) -> None:
            gate.wait()
            try:
                Ledger(path).close()
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        check = Ledger(path)
        assert [m.name for m in migrations.applied(check.db)] == names
        check.close()


def test_release_leases_of_gone_workers(tmp_path: Path, clock: FakeClock) -> None:
    ledger = Ledger(tmp_path / "gone.db", clock=clock)
    ledger.create_episode(
        episode_id="ep", name="ep", source="/x", content_hash="h", model="m", options={}
    )
    for idx in range(3):
        ledger.add_chunk(
            "ep", ChunkPlan(idx, idx * 10.0, idx * 10 + 10.0, idx * 10.0, idx * 10 + 10.0), "a"
        )
    ledger.finish_chunking("ep", duration=30.0, chunk_count=3)
    jobs = [
        ledger.claim(["ep"], WorkerInfo(w), lease_seconds=60, max_attempts=3).job
        for w in ("stopped", "died", "alive")
    ]
    assert all(jobs)
    assert ledger.release_leases(["stopped"]) == 1
    assert ledger.release_leases(["died"], count_attempt=True) == 1
    by_worker = {c["worker_id"]: c for c in ledger.chunks("ep")}
    assert by_worker["stopped"]["state"] == "queued" and by_worker["stopped"]["attempt"] == 0
    assert by_worker["died"]["state"] == "queued" and by_worker["died"]["attempt"] == 1
    assert by_worker["alive"]["state"] == "leased"
    assert ledger.release_leases([]) == 0


def test_a_ledger_used_as_a_context_manager_is_closed_after_it(tmp_path: Path) -> None:
    """``with Ledger(path) as ledger:`` closes its connection at the end, error or not, as
    sqlite-utils' Database does."""
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.episodes() == []
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        ledger.episodes()
    with pytest.raises(KeyError), Ledger(tmp_path / "ledger.db") as failing:
        raise KeyError("boom")
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        failing.episodes()
