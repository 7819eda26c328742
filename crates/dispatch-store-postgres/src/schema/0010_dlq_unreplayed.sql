-- Serves bulk DLQ replays (dispatch_core::DlqStore::replay_dlq_matching) and listings of entries
-- not yet replayed. Runs with search_path set to the store's schema, like 0001. A bulk replay
-- takes the oldest unreplayed entries by ID, a batch at a time; through the primary key each
-- batch would first walk past every entry the batches before it replayed (measured: 90,000
-- replayed entries before 1,000 unreplayed ones, 9.5 ms and 2,200 buffers per pick, against
-- 0.2 ms and 13 buffers through this index). The cost: a replay changes the column the
-- predicate names, so its update is no longer HOT and writes new entries in the DLQ's indexes;
-- replays are rare next to the finishes that write entries.
CREATE INDEX dlq_unreplayed ON dlq (id) WHERE replayed_as IS NULL;
