-- Serves bulk DLQ replays (dispatch_core::DlqStore::replay_dlq_matching) and listings of entries
-- not yet replayed. Runs with search_path set to the store's schema, like 0001. A bulk replay
-- takes the oldest unreplayed entries by ID in batches; through the primary key each batch
-- would first walk every entry the batches before it replayed. A replay now changes an indexed
-- column, so it is no longer a HOT update: one index entry less per replay, on a cold table.
CREATE INDEX dlq_unreplayed ON dlq (id) WHERE replayed_as IS NULL;
