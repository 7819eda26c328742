-- What a suspended run waits for (`Run::waiting`): a JSON array of `WaitingFor`, written by the
-- suspend that made the run suspended and cleared (NULL) by every statement that moves the run
-- out of that state. NULL means nothing.
ALTER TABLE runs ADD COLUMN waiting TEXT;
