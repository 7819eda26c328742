-- Flow control (`FlowStore`): concurrency keys, progress, queue configs and gates.

-- A job's concurrency key and its limit (both NULL without a key), the last progress its
-- handler reported (JSON text), and whether a gated claim counted it in its gates (1; NULL
-- otherwise) until it leaves running.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE jobs ADD COLUMN progress TEXT;
ALTER TABLE jobs ADD COLUMN flow_counted INTEGER;

-- One row per queue with a config: the `QueueConfig` as JSON. A queue without a row claims
-- through the plain path.
CREATE TABLE queue_configs (
    queue  TEXT PRIMARY KEY,
    config TEXT NOT NULL
) WITHOUT ROWID;

-- Gate state (`dispatch_core::flow::GateState`), keyed by the gate's name (`queue_gate`,
-- `tenant_gate`, `key_gate`): counted jobs running through it, and the rate's theoretical
-- arrival time (µs since the epoch; 0 when never passed). A missing row is a gate never passed.
CREATE TABLE flow_gates (
    gate    TEXT    PRIMARY KEY,
    running INTEGER NOT NULL DEFAULT 0,
    tat     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Serves the tenant lanes of gated claims: the tenants with available jobs of a (queue, name)
-- pair (a skip scan, one index search per tenant) and each tenant's due jobs in claim order.
-- Partial on a tenant, so jobs without one (and the plain path) never write it.
CREATE INDEX jobs_claim_tenant ON jobs (queue, name, scope_tenant, priority DESC, run_at, seq)
    WHERE state = 'available' AND scope_tenant IS NOT NULL;

-- Releases a counted job's running slots when it leaves running by any path (finish, release,
-- rescue, a sweep, a suspend or an end of its run): one less in each of its held gates (its
-- queue's, its tenant's within the queue, its key's; `held_gates`), and the mark cleared. The
-- WHEN clause keeps uncounted rows (every job of a queue without a config) free of it. The gate
-- names are `queue_gate`, `tenant_gate` and `key_gate` with U+001F (char(31)) between parts; a
-- NULL tenant or key makes its name NULL, which matches no gate.
CREATE TRIGGER jobs_flow_release AFTER UPDATE OF state ON jobs
    WHEN OLD.flow_counted AND NEW.state <> 'running'
BEGIN
    UPDATE flow_gates SET running = max(running - 1, 0)
    WHERE gate IN ('q' || char(31) || OLD.queue,
                   't' || char(31) || OLD.queue || char(31) || OLD.scope_tenant,
                   'k' || char(31) || OLD.concurrency_key);
    UPDATE jobs SET flow_counted = NULL WHERE seq = OLD.seq;
END;
