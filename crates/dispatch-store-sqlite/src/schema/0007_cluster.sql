-- The worker registry (`MembershipStore`): one row per registered worker, keyed by its ID as
-- `jobs.lease_owner` stores it (the `wkr_…` text), so the sweep finds a gone worker's running
-- jobs by comparing the two. `queues` is a JSON array of queue names; times are µs.
CREATE TABLE workers (
    id          TEXT    PRIMARY KEY,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    queues      TEXT    NOT NULL,
    concurrency INTEGER NOT NULL,
    version     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);

-- Leader election (`LeadershipStore`): one row per leadership name, its current term.
CREATE TABLE leaders (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    term       INTEGER NOT NULL,
    elected_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- The writes accepted under leader terms, in acceptance order (`seq`), at most
-- `LEADER_WRITES_KEPT` per name: each insert trims the oldest in its transaction.
CREATE TABLE leader_writes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    name   TEXT    NOT NULL,
    term   INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    action TEXT    NOT NULL
);
-- Serves the listing (newest first per name) and the trim.
CREATE INDEX leader_writes_name ON leader_writes (name, seq);
