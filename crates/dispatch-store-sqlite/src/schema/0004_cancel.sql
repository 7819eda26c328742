-- Run cancellation: the reason of a cancel request (`WorkflowStore::cancel_run`), NULL when
-- none was made. The first request's reason is kept.
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;
