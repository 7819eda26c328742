-- Runs with search_path set to the store's schema: every object lands there.
-- Times are bigint microseconds since the Unix epoch (dispatch_core::Timestamp), durations
-- bigint microseconds; to read one as a time: to_timestamp(run_at / 1e6).

-- Jobs: one row per job. `seq` gives enqueue order (FIFO within a priority).
CREATE TABLE jobs (
    id                uuid    PRIMARY KEY,
    seq               bigint  GENERATED ALWAYS AS IDENTITY,
    name              text    NOT NULL,
    queue             text    NOT NULL,
    payload           bytea   NOT NULL,
    priority          integer NOT NULL,
    state             text    NOT NULL
        CHECK (state IN ('available', 'running', 'completed', 'cancelled', 'dead')),
    attempt           bigint  NOT NULL,
    max_attempts      bigint  NOT NULL,
    timeout_us        bigint,
    run_at            bigint  NOT NULL,
    created_at        bigint  NOT NULL,
    finished_at       bigint,
    unique_key        text,
    unique_until      bigint,
    scope_app         text,
    scope_tenant      text,
    lease_owner       text,
    lease_token       uuid,
    lease_expires     bigint,
    cancel_requested  boolean NOT NULL DEFAULT false,
    errors            jsonb   NOT NULL DEFAULT '[]',
    dlq_id            uuid,
    last_finish_token uuid
);

-- Serves claim: available jobs of one queue in claim order.
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, run_at, seq) WHERE state = 'available';
-- Serves next_due: the earliest available job of one queue and name. Keyed by the expression
-- ARRAY[queue, name] on purpose: a claim (conditions on queue, name and run_at) can not use it.
-- Keyed by the plain columns, a queue filled faster than autovacuum analyzes it got row
-- estimates of 1, and every claim read all due jobs through this index and sorted them (33 ms
-- per claim at 100,000 jobs, against 0.4 ms through jobs_claim).
CREATE INDEX jobs_due ON jobs ((ARRAY[queue, name]), run_at) WHERE state = 'available';
-- Serves rescue: running jobs by lease expiry.
CREATE INDEX jobs_lease ON jobs (lease_expires, seq) WHERE state = 'running';
-- One live holder per (name, unique key): settles concurrent enqueues of one key.
CREATE UNIQUE INDEX jobs_unique_live ON jobs (name, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running');
-- Serves unique-key lookups, windows included.
CREATE INDEX jobs_unique ON jobs (name, unique_key, seq) WHERE unique_key IS NOT NULL;
-- Serves listings filtered by state.
CREATE INDEX jobs_state ON jobs (state, id);

-- The dead letter queue: one row per dead job.
CREATE TABLE dlq (
    id           uuid    PRIMARY KEY,
    job_id       uuid    NOT NULL,
    name         text    NOT NULL,
    queue        text    NOT NULL,
    payload      bytea   NOT NULL,
    priority     integer NOT NULL,
    attempts     bigint  NOT NULL,
    max_attempts bigint  NOT NULL,
    timeout_us   bigint,
    scope_app    text,
    scope_tenant text,
    errors       jsonb   NOT NULL,
    failed_at    bigint  NOT NULL,
    replayed_as  uuid,
    replayed_at  bigint
);
