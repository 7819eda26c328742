-- The cluster (dispatch_core::MembershipStore, dispatch_core::LeadershipStore): the worker
-- registry, one row per leadership, and the record of the writes accepted under leader terms.
-- Runs with search_path set to the store's schema, like 0001. Times are bigint microseconds;
-- worker IDs are text in their `wkr_…` form, as `jobs.lease_owner` holds them.

-- Workers: one row per registered worker (gone ones too, until deregistered).
CREATE TABLE workers (
    id          text    PRIMARY KEY,
    host        text    NOT NULL,
    pid         bigint  NOT NULL,
    queues      text[]  NOT NULL,
    concurrency bigint  NOT NULL,
    version     text    NOT NULL,
    state       text    NOT NULL CHECK (state IN ('active', 'draining', 'gone')),
    started_at  bigint  NOT NULL,
    last_seen   bigint  NOT NULL
);

-- Leaderships: the current term of each name. `term` only grows (the fencing token).
CREATE TABLE leaders (
    name       text   PRIMARY KEY,
    holder     text   NOT NULL,
    term       bigint NOT NULL,
    elected_at bigint NOT NULL,
    expires_at bigint NOT NULL
);

-- Writes accepted under a leader term, in the order accepted (`seq`); the newest 1000 per name
-- are kept (dispatch_core::cluster::LEADER_WRITES_KEPT).
CREATE TABLE leader_writes (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name   text   NOT NULL,
    term   bigint NOT NULL,
    at     bigint NOT NULL,
    action text   NOT NULL
);

-- Serves the record's reads (newest first) and its trim, per name.
CREATE INDEX leader_writes_name ON leader_writes (name, seq);
