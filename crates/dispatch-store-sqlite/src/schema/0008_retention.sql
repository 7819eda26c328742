-- Retention (`RetentionStore::prune`): every pass reads its candidates oldest first through an
-- index that holds only what could be pruned, so a pass with nothing old enough reads a few
-- index pages, not a table.

-- Whether the job drives a workflow run (1; NULL otherwise). A drive job goes with its run, never
-- on its own, so the finished-jobs index leaves them out: without that, every pass would step
-- over the completed drive jobs of every stored run (runs are kept longer than jobs). Set by the
-- trigger below whatever statement inserts the run; drive jobs of runs already stored are marked
-- here.
ALTER TABLE jobs ADD COLUMN drives_run INTEGER;
UPDATE jobs SET drives_run = 1 WHERE id IN (SELECT drive_job FROM runs);
CREATE TRIGGER runs_mark_drive_job AFTER INSERT ON runs
BEGIN
    UPDATE jobs SET drives_run = 1 WHERE id = NEW.drive_job;
END;

-- Serves the prune of finished jobs: by state, oldest finish first (ties in enqueue order: the
-- rowid ends every key). Its keys grow with time, so a finish writes to the index's last page.
CREATE INDEX jobs_finished ON jobs (state, finished_at)
    WHERE state IN ('completed', 'cancelled', 'dead') AND drives_run IS NULL;
-- Serves the prune of ended runs, oldest end first.
CREATE INDEX runs_ended ON runs (finished_at, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
-- Serves the prune of DLQ entries, oldest death first.
CREATE INDEX dlq_failed ON dlq (failed_at, id);
-- Serves the prune of gone workers, oldest heartbeat first.
CREATE INDEX workers_gone ON workers (last_seen, id) WHERE state = 'gone';
