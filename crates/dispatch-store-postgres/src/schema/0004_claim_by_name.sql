-- Claim by (queue, name): the claim index gains the job name after the queue, so a claim searches
-- one (queue, name) pair at a time and due jobs of names the worker does not run cost it nothing.
-- Runs with search_path set to the store's schema, like 0001.
--
-- 0001's index was keyed (queue, priority DESC, run_at, seq): a claim filtered names and run-at
-- row by row and walked every available job of the queue whenever fewer than its limit were due
-- (35-66 ms per claim beside 100,000 due jobs of another name, 6.5 ms beside 100,000 future ones).
-- Keyed by (queue, name, priority DESC, run_at, seq), a claim visits each priority level of a
-- pair (found by a skip scan: one probe per level) and reads a level's due jobs as one index
-- range that ends at the first job not yet due, so future jobs are not read either.
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (queue, name, priority DESC, run_at, seq) WHERE state = 'available';
