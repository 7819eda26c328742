-- Workflow runs, their checkpoints, event waits and kept events.
-- Runs with search_path set to the store's schema, like 0001. Times are bigint microseconds.

-- Runs: one row per workflow run. `drive_job` is the job (in `jobs`) that drives it.
CREATE TABLE runs (
    id              uuid    PRIMARY KEY,
    name            text    NOT NULL,
    version         bigint  NOT NULL,
    state           text    NOT NULL
        CHECK (state IN ('running', 'suspended', 'completed', 'failed', 'cancelled')),
    input           bytea   NOT NULL,
    output          bytea,
    error           text,
    scope_app       text,
    scope_tenant    text,
    idempotency_key text,
    parent          uuid,
    drive_job       uuid    NOT NULL UNIQUE,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    finished_at     bigint
);

-- One run per (workflow name, idempotency key): settles concurrent starts of one key.
CREATE UNIQUE INDEX runs_idempotency ON runs (name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Serve listings filtered by state or by name, in ID order.
CREATE INDEX runs_state ON runs (state, id);
CREATE INDEX runs_name ON runs (name, id);

-- Checkpoints: unique by (run, key). `seq` is write order; rewriting a key keeps its first seq.
CREATE TABLE checkpoints (
    run_id uuid   NOT NULL,
    key    text   NOT NULL,
    seq    bigint GENERATED ALWAYS AS IDENTITY,
    data   bytea  NOT NULL,
    at     bigint NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Event waits of suspended runs: `seq` is registration order (the oldest wait gets an event);
-- re-registering a (run, key) takes a new seq. The scope is the run's.
CREATE TABLE event_waits (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       uuid   NOT NULL,
    key          text   NOT NULL,
    name         text   NOT NULL,
    correlation  text   NOT NULL,
    scope_app    text,
    scope_tenant text,
    deadline     bigint NOT NULL,
    UNIQUE (run_id, key)
);

-- Serves publish: the waits of one (name, correlation) in registration order.
CREATE INDEX event_waits_match ON event_waits (name, correlation, seq);

-- Non-broadcast events nobody waited for, kept until `keep_until` for a later wait.
CREATE TABLE kept_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           uuid   NOT NULL,
    name         text   NOT NULL,
    correlation  text   NOT NULL,
    scope_app    text,
    scope_tenant text,
    payload      bytea  NOT NULL,
    keep_until   bigint NOT NULL
);

-- Serves suspend: the oldest kept event of one (name, correlation).
CREATE INDEX kept_events_match ON kept_events (name, correlation, seq);
-- Serves the purge of expired kept events (a few per publish).
CREATE INDEX kept_events_expiry ON kept_events (keep_until);
