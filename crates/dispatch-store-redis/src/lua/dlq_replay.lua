-- Replay a DLQ entry once (`transition::replay`, built in Rust: what the new job copies).
-- ARGV[2] = entry id, then the new job: id, name, queue, payload, priority, max attempts,
-- timeout (µs, '' for none), app and tenant (option_arg). The job is due NOW and created NOW.
-- Refuses NOT_FOUND for an entry that is gone. The entry's replayed_as is set in the same call
-- as the insert, so concurrent replays make one job. Answers {1, new id} or {2, earlier id}.
local dlq_id = ARGV[2]
local v = redis.call('HMGET', dlq_key(dlq_id), 'id', 'replayed_as')
if not v[1] then return refuse('NOT_FOUND', 'no DLQ entry ' .. dlq_id) end
if v[2] then return { 2, v[2] } end

local id = ARGV[3]
insert_job({ id = id, name = ARGV[4], queue = ARGV[5], payload = ARGV[6], priority = ARGV[7],
  run_at = NOW, max_attempts = ARGV[8], timeout_us = ARGV[9] ~= '' and ARGV[9] or nil,
  app = option(ARGV[10]), tenant = option(ARGV[11]) }, nil)
redis.call('HSET', dlq_key(dlq_id), 'replayed_as', id, 'replayed_at', NOW_S)
flush()
return { 1, id }
