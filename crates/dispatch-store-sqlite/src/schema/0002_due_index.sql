-- Serves next_due: the earliest run-at of available jobs by queue and name, found in one index
-- seek per pair (the claim index orders by priority first, so it would need a scan).
CREATE INDEX jobs_due ON jobs (queue, name, run_at) WHERE state = 'available';
