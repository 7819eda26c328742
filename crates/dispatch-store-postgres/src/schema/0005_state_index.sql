-- Fewer index writes per transition. Every claim and every finish changes a job's state, so
-- PostgreSQL writes a new entry into every index whose predicate the new row version meets.
-- 0001's `jobs_state (state, id)` covered every state: a claim (to running) and a finish each
-- paid an entry in it. Jobs that are available are listed through the claim index and running
-- ones through the lease index; only the finished states need this one.
-- Runs with search_path set to the store's schema, like 0001.
DROP INDEX jobs_state;
CREATE INDEX jobs_finished ON jobs (state, id) WHERE state IN ('completed', 'cancelled', 'dead');
