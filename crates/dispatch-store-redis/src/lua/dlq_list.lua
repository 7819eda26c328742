-- One page of DLQ entries in ID order. ARGV[2] = the cursor (an entry id, '' for the start),
-- ARGV[3] = how many matches to find (the page's limit + 1), ARGV[4] = the most index entries
-- to scan, then the filter: ARGV[5] queue, ARGV[6] name (option_arg: '-' none, '+value'),
-- ARGV[7] replayed ('' either, '1' replayed, '0' not replayed).
-- Answers {hashes (HGETALL) of the matches, in ID order; resume}: `resume` is the last scanned
-- id when the scan budget ran out before the page filled and the index did not end, else ''.
local CHUNK = 500
local cursor, want, budget = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local queue, name, replayed = option(ARGV[5]), option(ARGV[6]), ARGV[7]

-- Whether entry `id` matches the filter (false for an entry purged meanwhile).
local function matches(id)
  local v = redis.call('HMGET', dlq_key(id), 'queue', 'name', 'replayed_as')
  if not v[1] then return false end
  if queue and v[1] ~= queue then return false end
  if name and v[2] ~= name then return false end
  if replayed == '1' and not v[3] then return false end
  if replayed == '0' and v[3] then return false end
  return true
end

local found, scanned, last = {}, 0, nil
local from = cursor == '' and '-' or '(' .. cursor
while #found < want and scanned < budget do
  local take = math.min(CHUNK, budget - scanned)
  local ids = redis.call('ZRANGEBYLEX', K_DLQ, from, '+', 'LIMIT', 0, take)
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    if matches(id) then
      found[#found + 1] = redis.call('HGETALL', dlq_key(id))
      if #found == want then break end
    end
  end
  if #ids < take then return { found, '' } end
  from = '(' .. last
end
if #found < want and last then return { found, last } end
return { found, '' }
