"""The ledger's schema, as numbered migrations applied whenever the ledger opens.

Never edit a migration that has shipped: add ``m00N_…`` below it instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("whisperfarm")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE episodes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            source TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            model TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{}',
            duration REAL,
            state TEXT NOT NULL,
            error TEXT,
            chunk_count INTEGER,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX episodes_hash_model ON episodes (content_hash, model)")
    db.execute(
        """
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            episode_id TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            start REAL NOT NULL,
            end REAL NOT NULL,
            keep_start REAL NOT NULL,
            keep_end REAL NOT NULL,
            speech INTEGER NOT NULL DEFAULT 1,
            words INTEGER NOT NULL DEFAULT 0,
            audio_path TEXT NOT NULL,
            state TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            lease_token TEXT,
            lease_expires_at REAL,
            worker_id TEXT,
            claimed_at REAL,
            finished_at REAL,
            result_path TEXT,
            error TEXT,
            UNIQUE (episode_id, idx)
        )
        """
    )
    db.execute("CREATE INDEX chunks_state ON chunks (state, episode_id)")
    db.execute(
        """
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            host TEXT,
            machine_id TEXT,
            region TEXT,
            threads INTEGER,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            current_chunk INTEGER,
            chunks_done INTEGER NOT NULL DEFAULT 0,
            audio_seconds REAL NOT NULL DEFAULT 0,
            busy_seconds REAL NOT NULL DEFAULT 0
        )
        """
    )
    db.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            backend TEXT NOT NULL,
            url TEXT,
            pid INTEGER,
            budget REAL,
            started_at REAL NOT NULL,
            ended_at REAL,
            state TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE run_episodes (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            episode_id TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
            PRIMARY KEY (run_id, episode_id)
        )
        """
    )


@migrations()
def m002_machines(db: Database) -> None:
    """Fly machines a run started, with the times that make its spend."""
    db.execute(
        """
        CREATE TABLE machines (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            name TEXT NOT NULL UNIQUE,
            app TEXT NOT NULL,
            region TEXT,
            size TEXT NOT NULL,
            cpus INTEGER NOT NULL,
            memory_mb INTEGER NOT NULL,
            usd_per_second REAL NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            stopped_at REAL,
            destroyed_at REAL,
            updated_at REAL NOT NULL,
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX machines_run ON machines (run_id)")
    db.execute("ALTER TABLE runs ADD COLUMN max_machines INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN spent REAL NOT NULL DEFAULT 0")


@migrations()
def m003_calibrations(db: Database) -> None:
    """Measured transcription speed per model, compute type and kind of worker, for
    estimates users can trust."""
    db.execute(
        """
        CREATE TABLE calibrations (
            model TEXT NOT NULL,
            compute_type TEXT NOT NULL,
            kind TEXT NOT NULL,
            per_cpu REAL NOT NULL,
            audio_seconds REAL NOT NULL,
            runs INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (model, compute_type, kind)
        )
        """
    )


@migrations()
def m004_chunk_queue_index(db: Database) -> None:
    """A claim takes the longest queued chunk: this index yields it without sorting the
    whole queue on every claim."""
    db.execute("CREATE INDEX chunks_queue ON chunks (state, end - start DESC, idx)")


@migrations()
def m005_results_in_the_ledger(db: Database) -> None:
    """Chunk results move from a JSON file each into the ledger: a result and its chunk's
    'done' commit in one transaction, with no file, fsync or thread hop on the coordinator's
    hot path. Existing result files are read in; one that is gone stays missing (export
    reports it and 'whisperfarm retry' re-queues the chunk)."""
    db.execute(
        """
        CREATE TABLE results (
            chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
            body TEXT NOT NULL
        )
        """
    )
    rows = db.execute("SELECT id, result_path FROM chunks WHERE result_path IS NOT NULL")
    for chunk_id, path in rows.fetchall():
        try:
            body = Path(path).read_text(encoding="utf-8")
        except OSError:
            continue
        db.execute("INSERT INTO results (chunk_id, body) VALUES (?, ?)", (chunk_id, body))


@migrations()
def m006_machine_pool(db: Database) -> None:
    """A warm pool of stopped machines (``whisperfarm machines warm``): one machine can now
    serve several runs, so ``machines`` holds a row per machine per run (``pool`` marks a
    pool machine's), and ``pool_machines`` lists the pool itself."""
    db.execute(
        """
        CREATE TABLE machines_by_run (
            id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            app TEXT NOT NULL,
            region TEXT,
            size TEXT NOT NULL,
            cpus INTEGER NOT NULL,
            memory_mb INTEGER NOT NULL,
            usd_per_second REAL NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            stopped_at REAL,
            destroyed_at REAL,
            updated_at REAL NOT NULL,
            error TEXT,
            pool INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (id, run_id),
            UNIQUE (run_id, name)
        )
        """
    )
    db.execute(
        "INSERT INTO machines_by_run (id, run_id, name, app, region, size, cpus, memory_mb,"
        " usd_per_second, state, created_at, started_at, stopped_at, destroyed_at, updated_at,"
        " error) SELECT id, run_id, name, app, region, size, cpus, memory_mb, usd_per_second,"
        " state, created_at, started_at, stopped_at, destroyed_at, updated_at, error"
        " FROM machines"
    )
    db.execute("DROP TABLE machines")
    db.execute("ALTER TABLE machines_by_run RENAME TO machines")
    db.execute("CREATE INDEX machines_run ON machines (run_id)")
    db.execute(
        """
        CREATE TABLE pool_machines (
            id TEXT PRIMARY KEY,
            app TEXT NOT NULL,
            name TEXT NOT NULL,
            region TEXT,
            size TEXT NOT NULL,
            image TEXT NOT NULL,
            state TEXT NOT NULL,
            run_id TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )


@migrations()
def m007_vad_speech_spans(db: Database) -> None:
    """Where the speech model heard speech in each chunk (a JSON list of [start, end] on
    the episode timeline); NULL for chunks cut before, or without, the model."""
    db.execute("ALTER TABLE chunks ADD COLUMN speech_spans TEXT")


@migrations()
def m008_feed_episodes(db: Database) -> None:
    """Podcast feed episodes (``transcribe FEED_URL``), keyed per feed by GUID, else
    enclosure URL, with the content hash of what was downloaded: an episode whose content
    the ledger holds transcribed is skipped without downloading it again."""
    db.execute(
        """
        CREATE TABLE feed_episodes (
            feed_url TEXT NOT NULL,
            key TEXT NOT NULL,
            title TEXT NOT NULL,
            enclosure_url TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            file TEXT NOT NULL,
            downloaded_at REAL NOT NULL,
            PRIMARY KEY (feed_url, key)
        )
        """
    )


@migrations()
def m009_results_keyed_by_options(db: Database) -> None:
    """A chunk keeps one result per set of decoding options (``whisperfarm/decoding.py``):
    changing ``--words``, ``--language``, the compute type … queues the chunks again
    without throwing away what the earlier options made, and running with those again
    reuses it. Each episode records the key of its current options; each result the key
    of the options it was made with (existing ones: their episode's)."""
    db.execute("ALTER TABLE episodes ADD COLUMN options_key TEXT NOT NULL DEFAULT ''")
    for episode_id, options in db.execute("SELECT id, options FROM episodes").fetchall():
        key = _options_key_2026_11(json.loads(options or "{}"))
        db.execute("UPDATE episodes SET options_key = ? WHERE id = ?", (key, episode_id))
    db.execute(
        """
        CREATE TABLE results_by_options (
            chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
            options_key TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (chunk_id, options_key)
        )
        """
    )
    db.execute(
        "INSERT INTO results_by_options (chunk_id, options_key, body)"
        " SELECT r.chunk_id, e.options_key, r.body FROM results r"
        " JOIN chunks c ON c.id = r.chunk_id JOIN episodes e ON e.id = c.episode_id"
    )
    db.execute("DROP TABLE results")
    db.execute("ALTER TABLE results_by_options RENAME TO results")


def _options_key_2026_11(options: dict[str, Any]) -> str:
    """``decoding.options_key`` as it was when m009 was applied, copied so that a later
    change there can't change what this migration does (a test keeps the two equal)."""
    canonical = json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@migrations()
def m010_backup_attempts(db: Database) -> None:
    """A second, backup lease on a chunk that runs long while workers sit idle (the queue
    empty): its token, worker and expiry. The first result from either lease wins; the
    other is fenced off (``ledger.queue``)."""
    db.execute("ALTER TABLE chunks ADD COLUMN backup_token TEXT")
    db.execute("ALTER TABLE chunks ADD COLUMN backup_worker_id TEXT")
    db.execute("ALTER TABLE chunks ADD COLUMN backup_expires_at REAL")
