-- Run cancellation: the reason of a cancel request (`WorkflowStore::cancel_run`), kept on the
-- run while it winds down; NULL when none was made. Runs with search_path set to the store's
-- schema, like 0001.
ALTER TABLE runs ADD COLUMN cancel_reason text;
