-- Workflow runs: one row per run, driven by one job (`drive_job`, a row of `jobs`).
CREATE TABLE runs (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    input           BLOB    NOT NULL,
    output          BLOB,
    error           TEXT,
    scope_app       TEXT,
    scope_tenant    TEXT,
    idempotency_key TEXT,
    parent          TEXT,
    drive_job       TEXT    NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);

-- Serves idempotent starts: one run per (workflow name, key).
CREATE UNIQUE INDEX runs_idempotency ON runs (name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Serve listings filtered by state or by workflow name, in ID order.
CREATE INDEX runs_state ON runs (state, id);
CREATE INDEX runs_name ON runs (name, id);

-- Checkpoints: one row per (run, key). `seq` (the rowid) is write order; rewriting a key
-- updates its row in place, so it keeps its first position.
CREATE TABLE checkpoints (
    seq    INTEGER PRIMARY KEY,
    run_id TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    data   BLOB    NOT NULL,
    at     INTEGER NOT NULL
);
CREATE UNIQUE INDEX checkpoints_key ON checkpoints (run_id, key);

-- Registered event waits. `seq` is registration order: an event goes to the oldest match.
CREATE TABLE event_waits (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    correlation  TEXT    NOT NULL,
    scope_app    TEXT,
    scope_tenant TEXT,
    deadline     INTEGER NOT NULL
);
CREATE UNIQUE INDEX event_waits_key ON event_waits (run_id, key);
-- Serves publish: the waits on (name, correlation) in registration order.
CREATE INDEX event_waits_match ON event_waits (name, correlation, seq);

-- Events published while nobody waited, kept until `keep_until` for a later wait.
CREATE TABLE kept_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    correlation  TEXT    NOT NULL,
    scope_app    TEXT,
    scope_tenant TEXT,
    payload      BLOB    NOT NULL,
    keep_until   INTEGER NOT NULL
);
-- Serves suspend: the oldest kept event on (name, correlation).
CREATE INDEX kept_events_match ON kept_events (name, correlation, seq);
-- Serves the purge of expired kept events.
CREATE INDEX kept_events_expiry ON kept_events (keep_until);
