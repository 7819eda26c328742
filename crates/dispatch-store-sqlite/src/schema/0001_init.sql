-- Jobs: one row per job. `seq` gives enqueue order (FIFO within a priority).
CREATE TABLE jobs (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    name              TEXT    NOT NULL,
    queue             TEXT    NOT NULL,
    payload           BLOB    NOT NULL,
    priority          INTEGER NOT NULL,
    state             TEXT    NOT NULL,
    attempt           INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    timeout_us        INTEGER,
    run_at            INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    unique_key        TEXT,
    unique_until      INTEGER,
    scope_app         TEXT,
    scope_tenant      TEXT,
    lease_owner       TEXT,
    lease_token       TEXT,
    lease_expires     INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    errors            TEXT    NOT NULL DEFAULT '[]',
    dlq_id            TEXT,
    last_finish_token TEXT
);

-- Serves claim: due available jobs by queue and name, in claim order.
CREATE INDEX jobs_claim ON jobs (queue, name, priority DESC, run_at, seq)
    WHERE state = 'available';
-- Serves rescue: running jobs by lease expiry.
CREATE INDEX jobs_lease ON jobs (lease_expires) WHERE state = 'running';
-- Serves unique-key lookups on enqueue.
CREATE INDEX jobs_unique ON jobs (name, unique_key) WHERE unique_key IS NOT NULL;
-- Serves listings filtered by state.
CREATE INDEX jobs_state ON jobs (state, id);

-- The dead letter queue: one row per dead job.
CREATE TABLE dlq (
    id           TEXT    PRIMARY KEY,
    job_id       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    priority     INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_us   INTEGER,
    scope_app    TEXT,
    scope_tenant TEXT,
    errors       TEXT    NOT NULL,
    failed_at    INTEGER NOT NULL,
    replayed_as  TEXT,
    replayed_at  INTEGER
);
