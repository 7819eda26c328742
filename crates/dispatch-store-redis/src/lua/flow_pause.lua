-- Pause or resume a queue, or one job name of it (`FlowStore::set_paused`). ARGV[2] = the
-- queue, ARGV[3] = the name (option_arg: '-' for the whole queue), ARGV[4] = '1' pause, '0'
-- resume. A queue without a config gets a default one first (ensure_config); the rest of the
-- config is kept; a resume wakes the queue's workers. Answers 1 when the pause state changed,
-- else 0.
local queue, name, pause = ARGV[2], option(ARGV[3]), ARGV[4] == '1'
ensure_config(queue)
local config = cjson.decode(redis.call('HGET', K_FLOW_CONFIG, queue))
local names = {}
for _, n in ipairs(config.paused_names) do names[n] = true end
local changed = false
if name == nil then
  changed = config.paused ~= pause
  config.paused = pause
else
  changed = (names[name] == true) ~= pause
  names[name] = pause or nil
end
if not changed then return 0 end
-- cjson writes an empty table as {}: the names (a sorted set in serde) are spliced in as an
-- array.
local list = {}
for n in pairs(names) do list[#list + 1] = n end
table.sort(list)
config.paused_names = nil
local rest = cjson.encode(config)
local names_json = #list == 0 and '[]' or cjson.encode(list)
redis.call('HSET', K_FLOW_CONFIG, queue,
  string.sub(rest, 1, -2) .. ',"paused_names":' .. names_json .. '}')
if not pause then wake(queue) end
flush()
return 1
