-- Cron entries (dispatch_core::CronStore). Runs with search_path set to the store's schema, like
-- 0001. Times are bigint microseconds since the Unix epoch.

-- One row per entry. `entry` is the entry as registered (serde JSON of dispatch_core::CronEntry);
-- `name`, the scope and `enabled` are columns as well, for the unique key, the listings and the
-- due reads (`enabled` is the one the store keeps current; a read takes it from the column).
CREATE TABLE cron_entries (
    id           uuid    PRIMARY KEY,
    name         text    NOT NULL,
    scope_app    text,
    scope_tenant text,
    entry        jsonb   NOT NULL,
    enabled      boolean NOT NULL,
    next_fire    bigint,
    last_fired   bigint,
    last_job     uuid,
    created_at   bigint  NOT NULL,
    updated_at   bigint  NOT NULL
);

-- One entry per (scope, name). A plain unique index would let entries of an unset scope repeat
-- (NULLs are distinct); `coalesce` keys them, and the `IS NULL` flags keep an unset part apart
-- from an empty one (both are valid scopes). Serves `find_cron` and the upsert of `save_cron`.
CREATE UNIQUE INDEX cron_entries_scope_name ON cron_entries
    ((coalesce(scope_app, '')), (coalesce(scope_tenant, '')), name,
     (scope_app IS NULL), (scope_tenant IS NULL));

-- Serves the leader's due reads: enabled entries with a next fire, soonest first.
CREATE INDEX cron_entries_due ON cron_entries (next_fire) WHERE enabled AND next_fire IS NOT NULL;
