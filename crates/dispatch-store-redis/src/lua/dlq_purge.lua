-- Purge DLQ entries, one bounded stretch of the index per call. ARGV[2] = the cursor (the
-- last id a previous call scanned, '' for the start), ARGV[3] = the most index entries to
-- scan, then the filter: ARGV[4] queue, ARGV[5] name (option_arg), ARGV[6] failed before (µs,
-- '' for any), ARGV[7] replayed ('' either, '1', '0'). Deletes each scanned entry matching
-- every set field. Answers {deleted, resume}: resume is the last scanned id, '' at the end.
local cursor, scan = ARGV[2], tonumber(ARGV[3])
local queue, name = option(ARGV[4]), option(ARGV[5])
local before = ARGV[6] ~= '' and tonumber(ARGV[6]) or nil
local replayed = ARGV[7]

local from = cursor == '' and '-' or '(' .. cursor
local ids = redis.call('ZRANGEBYLEX', K_DLQ, from, '+', 'LIMIT', 0, scan)
local doomed, keys = {}, {}
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', dlq_key(id), 'queue', 'name', 'failed_at', 'replayed_as')
  local match = (not queue or v[1] == queue) and (not name or v[2] == name)
    and (not before or (v[3] and tonumber(v[3]) < before))
    and (replayed == '' or (replayed == '1') == (v[4] and true or false))
  if match then
    doomed[#doomed + 1] = id
    keys[#keys + 1] = dlq_key(id)
  end
end
variadic('ZREM', K_DLQ, doomed)
variadic('ZREM', K_DLQ_FAILED, doomed)
for _, key in ipairs(keys) do redis.call('DEL', key) end
local resume = ''
if #ids == scan then resume = ids[#ids] end
return { #doomed, resume }
