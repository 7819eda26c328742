-- One page of DLQ entries in ID order. ARGV[2] = the cursor (an entry id, '' for the start),
-- ARGV[3] = how many matches to find (the page's limit + 1), ARGV[4] = the most index entries
-- to scan, then the filter at ARGV[5] (`dlq_filter`).
-- Answers {hashes (HGETALL) of the matches, in ID order; resume}: `resume` is the last scanned
-- id when the scan budget ran out before the page filled and the index did not end, else ''.
local want, f = tonumber(ARGV[3]), dlq_filter(5)
local found = {}
local resume = dlq_walk(ARGV[2], tonumber(ARGV[4]), function(id)
  if dlq_matches(f, id) then found[#found + 1] = redis.call('HGETALL', dlq_key(id)) end
  return #found >= want
end)
return { found, resume }
