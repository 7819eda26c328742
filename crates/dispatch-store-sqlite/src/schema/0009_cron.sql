-- Cron entries (`CronStore`): one row per entry, keyed by its ID (the `cron_…` text). `entry` is
-- the registered `CronEntry` as JSON; `name`, the scope and `enabled` repeat its fields for the
-- indexes below, and every write stores them together. Times are µs.
CREATE TABLE cron (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    scope_app    TEXT,
    scope_tenant TEXT,
    entry        TEXT    NOT NULL,
    enabled      INTEGER NOT NULL,
    next_fire    INTEGER,
    last_fired   INTEGER,
    last_job     TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- One entry per (scope, name). `json_array` keeps an unset part (null) apart from an empty one
-- (""), which `ifnull` would merge; lookups search by name and compare the scope with `IS`.
CREATE UNIQUE INDEX cron_scope_name ON cron (name, json_array(scope_app, scope_tenant));
-- Serves due reads: enabled entries with a next fire, soonest first.
CREATE INDEX cron_due ON cron (next_fire, id) WHERE enabled AND next_fire IS NOT NULL;
