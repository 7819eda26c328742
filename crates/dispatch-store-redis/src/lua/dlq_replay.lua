-- Replay a DLQ entry once (`replay_entry`). ARGV[2] = entry id, ARGV[3] = the new job's id,
-- ARGV[4] = the queue (option_arg: '-' keeps the entry's), ARGV[5] = the delay (µs, '' none).
-- Refuses NOT_FOUND for an entry that is gone. Answers {1, new id} or {2, earlier id}.
local answer = replay_entry(ARGV[2], ARGV[3], option(ARGV[4]), tonumber(ARGV[5]) or 0)
if not answer then return refuse('NOT_FOUND', 'no DLQ entry ' .. ARGV[2]) end
flush()
return answer
