-- The state index served no query: listings filter by state with `(? IS NULL OR state = ?)`,
-- which SQLite can not search an index by, and every other state test has a partial index of
-- its own (claim, next-due, rescue). It cost every transition two writes to a random page (its
-- key ends with the random job ID): a delete under the old state and an insert under the new.
DROP INDEX jobs_state;
