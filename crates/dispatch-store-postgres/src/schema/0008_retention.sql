-- Retention (dispatch_core::RetentionStore) and storage settings against bloat. Runs with
-- search_path set to the store's schema, like 0001. See ARCHITECTURE.md, "Bloat and vacuum".

-- Serves the prune of finished jobs: per finished state, oldest finish first (`seq` breaks ties
-- without relying on IDs being time-ordered). A prune reads `limit` entries at the front of
-- each state's range and stops: its cost follows the batch, not the table, however many younger
-- finished jobs there are. Beside `jobs_finished (state, id)`, which serves listings by state in
-- ID order; each finish now writes one more index entry (measured in ARCHITECTURE.md).
CREATE INDEX jobs_retention ON jobs (state, finished_at, seq)
    WHERE state IN ('completed', 'cancelled', 'dead');
-- Serves the prune of ended runs, oldest end first.
CREATE INDEX runs_ended ON runs (finished_at, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
-- Serves the prune of DLQ entries, oldest death first.
CREATE INDEX dlq_failed ON dlq (failed_at, id);

-- Autovacuum per table. The defaults (vacuum when 20 % of the rows are dead, or 20 % new since
-- the last vacuum) let a queue table of a million rows carry 200,000 dead versions before a
-- vacuum starts, and the default cost limit makes that vacuum slow. `jobs` is written on every
-- claim and finish: vacuum it at 1 % dead (plus 1,000 rows), after 5 % inserted (so the
-- visibility map stays current and index-only reads stay cheap), analyze it at 2 %, and let
-- its vacuum do ten times the default work between pauses. The other churning tables get the
-- same thresholds. Fillfactor 90 keeps room on each page for the updates that can be HOT
-- (cancel requests, errors written without a state change) and for the new version of a
-- claim or finish to land on the same page, which keeps a vacuum's work local.
ALTER TABLE jobs SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE runs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE checkpoints SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE dlq SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_cost_limit = 2000);
ALTER TABLE kept_events SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE event_waits SET (autovacuum_vacuum_scale_factor = 0.05);
-- Small tables updated in place all day (a worker's heartbeat, a leader's renewal): their
-- updates touch no indexed column, so they are HOT when the page has room; leave it.
ALTER TABLE workers SET (fillfactor = 50);
ALTER TABLE leaders SET (fillfactor = 50);
