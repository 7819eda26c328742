-- The lease index keyed on the lease, not on the state. A finish, a heartbeat and a drive's
-- fence look their running jobs up by ID and test `state = 'running'`; with the index's
-- predicate on that same test, the planner may read the whole index of running jobs instead of
-- the primary key (it estimates a handful of running rows). While a transaction holds the xmin
-- horizon back (an application session idle in transaction), every attempt that ended leaves
-- its dead entry in that index, and such a plan reads them all on every call: measured, 18,000
-- buffers and 7 ms per finish of 16 jobs over 19,000 ended attempts, against 94 buffers by ID.
-- Only the lease fields decide what this index holds now: every transition out of `running`
-- clears them in the same update. The rescue's `lease_expires <= now` and the sweep's
-- `lease_expires IS NOT NULL` still find it; a bare state test can not.
-- Runs with search_path set to the store's schema, like 0001.
DROP INDEX jobs_lease;
CREATE INDEX jobs_lease ON jobs (lease_expires, seq) WHERE lease_expires IS NOT NULL;
