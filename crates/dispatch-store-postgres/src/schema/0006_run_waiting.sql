-- What a suspended run waits for (`Run::waiting`): a JSON array of `WaitingFor`, written by the
-- suspend that made the run suspended and cleared (NULL) by the statements that move the run
-- out of that state. NULL means nothing. Runs with search_path set to the store's schema,
-- like 0001.
ALTER TABLE runs ADD COLUMN waiting jsonb;
