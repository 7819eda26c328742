-- List runs (WorkflowStore::list_runs). ARGV[2] = cursor (the last run id seen, '' for the
-- first page), ARGV[3] = limit, ARGV[4] = state ('' for any), ARGV[5] = workflow name ('' for
-- any). Walks the run index in ID order after the cursor (the state's own index when a state
-- is asked for), keeping the runs whose name matches, until limit + 1 match or SCAN_BUDGET
-- index entries were read.
-- Answers { next, hash, hash, ... }: next is '' on the last page; when the budget ran out
-- before a full page, the page is short and next is the last id scanned, so a caller paging on
-- reads on (a page may even be empty) and no call reads more than SCAN_BUDGET entries.
local SCAN_BUDGET = 10000
local CHUNK = 500
local after, limit = ARGV[2], tonumber(ARGV[3])
local state, name = ARGV[4], ARGV[5]
local index = K_RUNS
if state ~= '' then index = run_state_key(state) end

local found, scanned, last = {}, 0, nil
local from = '-'
if after ~= '' then from = '(' .. after end
local exhausted = false
while #found <= limit and scanned < SCAN_BUDGET do
  local take = math.min(CHUNK, SCAN_BUDGET - scanned)
  local ids = redis.call('ZRANGEBYLEX', index, from, '+', 'LIMIT', 0, take)
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    if name == '' or redis.call('HGET', run_key(id), 'name') == name then
      found[#found + 1] = id
      if #found > limit then break end
    end
  end
  if #ids < take then exhausted = true; break end
  from = '(' .. last
end

local next = ''
if #found > limit then
  found[#found] = nil
  next = found[#found]
elseif not exhausted and #found <= limit and scanned >= SCAN_BUDGET then
  next = last
end
local out = { next }
for _, id in ipairs(found) do out[#out + 1] = redis.call('HGETALL', run_key(id)) end
return out
