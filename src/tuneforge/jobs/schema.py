"""The jobs database's schema as an append-only list of named migrations.

Never edit or reorder an entry once released: add a new one at the end. A database that records a migration this list
lacks at that place is refused (`db.open_database`). The SQL is portable (TEXT / INTEGER / REAL, JSON as TEXT);
`{serial}` is the backend's auto-numbered primary key, which orders every list (`seq`), since ids are random.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_files",
        """
        CREATE TABLE files (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            status TEXT NOT NULL,
            status_details TEXT,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL
        );
        CREATE INDEX files_purpose ON files (purpose, seq)
        """,
    ),
    (
        "0002_jobs",
        """
        CREATE TABLE jobs (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            model TEXT NOT NULL,
            training_file TEXT NOT NULL,
            validation_file TEXT,
            hyperparameters TEXT NOT NULL,
            method TEXT,
            suffix TEXT,
            seed INTEGER NOT NULL,
            metadata TEXT,
            status TEXT NOT NULL,
            error TEXT,
            fine_tuned_model TEXT,
            trained_tokens INTEGER,
            result_files TEXT NOT NULL,
            estimated_finish INTEGER,
            created_at INTEGER NOT NULL,
            finished_at INTEGER,
            run_dir TEXT,
            tuneforge TEXT NOT NULL,
            worker_pid INTEGER,
            heartbeat_at INTEGER
        );
        CREATE INDEX jobs_status ON jobs (status, seq);
        CREATE TABLE job_metadata (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (job_id, key)
        );
        CREATE INDEX job_metadata_pair ON job_metadata (key, value)
        """,
    ),
    (
        "0003_events",
        """
        CREATE TABLE events (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL,
            type TEXT NOT NULL,
            data TEXT
        );
        CREATE INDEX events_job ON events (job_id, seq)
        """,
    ),
    (
        "0004_checkpoints",
        """
        CREATE TABLE checkpoints (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            step_number INTEGER NOT NULL,
            metrics TEXT NOT NULL,
            fine_tuned_model_checkpoint TEXT NOT NULL,
            path TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (job_id, step_number)
        );
        CREATE INDEX checkpoints_job ON checkpoints (job_id, seq)
        """,
    ),
    (
        "0005_deleted_models",
        """
        CREATE TABLE deleted_models (
            seq {serial},
            model TEXT NOT NULL UNIQUE,
            deleted_at INTEGER NOT NULL
        )
        """,
    ),
]
