-- Count DLQ entries per (queue, job name), over one bounded stretch of the index per call.
-- ARGV[2] = the cursor ('' for the start), ARGV[3] = the most index entries to scan, then the
-- filter at ARGV[4] (`dlq_filter`). Answers {counts, resume}: counts a flat list of queue,
-- name, count; resume the last scanned id when the budget ran out, '' at the end.
local f = dlq_filter(4)
local counts = {}
local resume = dlq_walk(ARGV[2], tonumber(ARGV[3]), function(id)
  local v = dlq_matches(f, id)
  if v then
    local names = counts[v[1]]
    if not names then names = {}; counts[v[1]] = names end
    names[v[2]] = (names[v[2]] or 0) + 1
  end
  return false
end)
local out = {}
for queue, names in pairs(counts) do
  for name, n in pairs(names) do
    out[#out + 1] = queue; out[#out + 1] = name; out[#out + 1] = n
  end
end
return { out, resume }
