-- Purge DLQ entries matching the filter, oldest first, over one bounded stretch of the index
-- per call. ARGV[2] = the cursor ('' for the start), ARGV[3] = the most index entries to scan,
-- ARGV[4] = the most entries to delete, then the filter at ARGV[5] (`dlq_filter`). An entry
-- leaves its hash, the listing index and retention's index (`dlqs:failed`) together.
-- Answers {deleted, resume}: resume is the last scanned id when the budget ran out, else ''.
local limit, f = tonumber(ARGV[4]), dlq_filter(5)
local doomed, keys = {}, {}
local resume = dlq_walk(ARGV[2], tonumber(ARGV[3]), function(id)
  if dlq_matches(f, id) then
    doomed[#doomed + 1] = id
    keys[#keys + 1] = dlq_key(id)
  end
  return #doomed >= limit
end)
variadic('ZREM', K_DLQ, doomed)
variadic('ZREM', K_DLQ_FAILED, doomed)
for i = 1, #keys, 1000 do redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys))) end
return { #doomed, resume }
