-- Flow control (dispatch_core::flow, FlowStore): queue configs, gates, concurrency keys,
-- progress. Runs with search_path set to the store's schema, like 0001; the functions below keep
-- that search_path (`SET search_path FROM CURRENT`), so they find the schema's tables whatever
-- the calling session's search_path is.

-- A job's concurrency key and its limit (both set or both NULL), the last progress its handler
-- reported (kept across retries), and whether a gated claim counted it in its gates
-- (`flow_counted`: set by the claim, cleared by the release trigger below). The new columns have
-- constant defaults or none, so adding them rewrites no rows.
ALTER TABLE jobs
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN progress          jsonb,
    ADD COLUMN flow_counted      boolean NOT NULL DEFAULT false;

-- One row per gated queue: the QueueConfig as serde JSON (the store reads it back whole; claims'
-- next-due probe reads `paused` and `paused_names` in SQL).
CREATE TABLE queue_configs (
    queue  text  PRIMARY KEY,
    config jsonb NOT NULL
);

-- One row per gate ever passed (dispatch_core::flow::queue_gate, tenant_gate, key_gate):
-- `running` counted jobs as of the last fold, `tat` the rate's arrival time (µs). A gate's live
-- running count is `running` minus its rows in `flow_releases`. Written only by gated claims
-- (under the gate's row lock, or for tenant gates under their queue gate's lock) and by a
-- queue's first config (same locks). Rows stay when a config is deleted.
CREATE TABLE gates (
    gate    text   PRIMARY KEY,
    running bigint NOT NULL DEFAULT 0,
    tat     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- Releases not yet folded into `gates.running`: one row per gate a counted job left when it
-- stopped running (any path: the trigger below). Append-only for finishes, so a finish never
-- waits on a gate's row lock (a batch of finishes updating gate rows could deadlock with another
-- batch); a gated claim deletes the rows of the gates it writes and subtracts them, under their
-- locks.
CREATE TABLE flow_releases (
    gate text NOT NULL
);
CREATE INDEX flow_releases_gate ON flow_releases (gate);

-- Lanes of fair queues: available jobs with a tenant per (queue, name, tenant) in claim order.
-- Gated claims find a pair's tenants by a skip scan over it (one probe per tenant) and read each
-- lane's levels and due range from it.
CREATE INDEX jobs_lanes ON jobs (queue, name, scope_tenant, priority DESC, run_at, seq)
    WHERE state = 'available' AND scope_tenant IS NOT NULL;

-- The release: a counted job leaving `running` (finish of any outcome, release, rescue, a sweep,
-- a drive's suspend or end, a cancel) gives back one running slot in each gate it holds
-- (dispatch_core::flow::held_gates: its queue's, its tenant's within the queue, its key's) and is
-- no longer counted. The WHEN clause keeps it free for jobs never counted (no function call).
CREATE FUNCTION flow_release() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO flow_releases (gate)
    SELECT g FROM (VALUES ('q' || chr(31) || OLD.queue),
                          ('t' || chr(31) || OLD.queue || chr(31) || OLD.scope_tenant),
                          ('k' || chr(31) || OLD.concurrency_key)) AS v(g)
    WHERE g IS NOT NULL;
    NEW.flow_counted := false;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_flow_release BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.flow_counted AND NEW.state <> 'running')
    EXECUTE FUNCTION flow_release();

-- A counted job deleted while running (nothing in the store does this; an operator might) gives
-- its slots back too.
CREATE FUNCTION flow_release_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO flow_releases (gate)
    SELECT g FROM (VALUES ('q' || chr(31) || OLD.queue),
                          ('t' || chr(31) || OLD.queue || chr(31) || OLD.scope_tenant),
                          ('k' || chr(31) || OLD.concurrency_key)) AS v(g)
    WHERE g IS NOT NULL;
    RETURN OLD;
END $$;

CREATE TRIGGER jobs_flow_release_deleted AFTER DELETE ON jobs FOR EACH ROW
    WHEN (OLD.flow_counted)
    EXECUTE FUNCTION flow_release_deleted();

-- Lock the gates `wanted` (creating missing rows first) in gate order, so concurrent callers
-- never deadlock, and answer each one's live state: running less its pending releases, read
-- after the lock (each statement of a function takes a fresh snapshot under READ COMMITTED, so
-- the releases counted are those committed by the time the lock was had).
CREATE FUNCTION flow_lock_gates(wanted text[])
RETURNS TABLE (gate text, running bigint, tat bigint) LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO gates AS g (gate)
    SELECT DISTINCT w FROM unnest(wanted) AS w ORDER BY 1
    ON CONFLICT (gate) DO NOTHING;
    PERFORM 1 FROM gates g WHERE g.gate = ANY (wanted) ORDER BY g.gate FOR UPDATE;
    RETURN QUERY
    SELECT g.gate, greatest(g.running - (SELECT count(*) FROM flow_releases r
                                         WHERE r.gate = g.gate), 0)::bigint, g.tat
    FROM gates g WHERE g.gate = ANY (wanted);
END $$;

-- Add `added[i]` running jobs to gate `gates[i]` and move its arrival time to at least `tats[i]`,
-- folding its pending releases in (deleted and subtracted in one statement, so each release is
-- subtracted once whoever folds concurrently). Missing rows are created first and the rows are
-- locked in gate order (the caller normally holds them already).
CREATE FUNCTION flow_add_gates(wanted text[], added bigint[], tats bigint[])
RETURNS void LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO gates AS g (gate)
    SELECT DISTINCT w FROM unnest(wanted) AS w ORDER BY 1
    ON CONFLICT (gate) DO NOTHING;
    PERFORM 1 FROM gates g WHERE g.gate = ANY (wanted) ORDER BY g.gate FOR UPDATE;
    WITH i AS (SELECT * FROM unnest(wanted, added, tats) AS i(gate, n, tat)),
    rel AS (DELETE FROM flow_releases r WHERE r.gate = ANY (wanted) RETURNING r.gate),
    reln AS (SELECT rel.gate, count(*) AS n FROM rel GROUP BY rel.gate)
    UPDATE gates g SET running = greatest(g.running - coalesce(reln.n, 0) + i.n, 0),
        tat = greatest(g.tat, i.tat)
    FROM i LEFT JOIN reln ON reln.gate = i.gate
    WHERE g.gate = i.gate;
END $$;
