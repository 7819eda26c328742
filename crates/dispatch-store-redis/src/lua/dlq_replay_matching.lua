-- Replay the DLQ entries matching the filter that were not replayed yet, oldest first, over
-- one bounded stretch of the index per call (`replay_entry`: each entry's check and mark are
-- this script's, so an entry another call replayed meanwhile no longer matches). ARGV[2] = the
-- cursor ('' for the start), ARGV[3] = the most index entries to scan, ARGV[4] = the queue
-- (option_arg: '-' keeps each entry's), ARGV[5] = the delay (µs, '' none), the filter at
-- ARGV[6] (`dlq_filter`, its replayed part ignored), then the new jobs' ids from ARGV[14]: one
-- per entry at most this call may replay.
-- Answers {replayed, resume}: replayed a flat list of entry id, job id; resume the last
-- scanned id when the budget ran out first, else ''.
local queue, delay, f = option(ARGV[4]), tonumber(ARGV[5]) or 0, dlq_filter(6)
f.replayed = '0'
local next_id = 14
local out = {}
local resume = dlq_walk(ARGV[2], tonumber(ARGV[3]), function(id)
  if next_id > #ARGV then return true end
  if dlq_matches(f, id) then
    local job_id = ARGV[next_id]
    next_id = next_id + 1
    replay_entry(id, job_id, queue, delay)
    out[#out + 1] = id; out[#out + 1] = job_id
  end
  return next_id > #ARGV
end)
flush()
return { out, resume }
