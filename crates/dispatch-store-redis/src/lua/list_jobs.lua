-- One page of a job listing. ARGV[2] = the index: '' for every job, else a state's name;
-- ARGV[3] = the cursor (the last ID of the previous page, '' for the first page);
-- ARGV[4] = how many matches to return at most (the page's limit + 1, proving a next page);
-- ARGV[5] = how many index entries to read at most; ARGV[6] = queue filter, ARGV[7] = name
-- filter ('-' for none, '+<value>' for a value).
-- The index is read in ID order (score 0, lexical). Answers { rows, last, stopped }: each
-- match's hash (HGETALL), the last ID read ('' for none), and 1 when the budget ran out before
-- the index did with fewer than ARGV[4] matches found (the caller's next page starts after
-- `last`), else 0.
local CHUNK = 500
local index, cursor = ARGV[2], ARGV[3]
local want, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local queue, name = ARGV[6], ARGV[7]
local filtered = queue ~= '-' or name ~= '-'
if queue ~= '-' then queue = string.sub(queue, 2) end
if name ~= '-' then name = string.sub(name, 2) end

local key = K_JOBS
if index ~= '' then key = state_key(index) end

-- The IDs after `from` ('-' or '(<id>') of the index, at most `size`, in ID order. Running
-- jobs are read from K_LEASES (scored by expiry, not ID): all of them, sorted here, which a
-- listing can afford because running jobs are bounded by the workers' slots.
local running
local function range(from, size)
  if index ~= 'running' then
    return redis.call('ZRANGEBYLEX', key, from, '+', 'LIMIT', 0, size)
  end
  if not running then
    running = redis.call('ZRANGE', K_LEASES, 0, -1)
    table.sort(running)
  end
  local after = string.sub(from, 2)
  local ids = {}
  for _, id in ipairs(running) do
    if (from == '-' or id > after) and #ids < size then ids[#ids + 1] = id end
  end
  return ids
end

-- Whether job `id` passes the queue and name filters.
local function matches(id)
  if not filtered then return true end
  local v = redis.call('HMGET', job_key(id), 'queue', 'name')
  if not v[1] then return false end
  return (queue == '-' or v[1] == queue) and (name == '-' or v[2] == name)
end

local rows, scanned, last = {}, 0, ''
local start = '-'
if cursor ~= '' then start = '(' .. cursor end
local ended = false
while #rows < want and scanned < budget do
  -- Unfiltered, every entry matches: read no more than the page needs.
  local size = math.min(budget - scanned, filtered and CHUNK or (want - #rows))
  local ids = range(start, size)
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    if matches(id) then
      local row = redis.call('HGETALL', job_key(id))
      if #row > 0 then rows[#rows + 1] = row end
      if #rows >= want then break end
    end
  end
  if #ids < size then ended = true; break end
  start = '(' .. last
end
local stopped = 0
if #rows < want and not ended and scanned >= budget then stopped = 1 end
return { rows, last, stopped }
