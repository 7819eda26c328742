-- Read queue configs (`FlowStore::queue_flow`, `list_queue_flows`). ARGV[2] = the queue, or ''
-- for every queue with a config. Answers a flat list: queue, config (JSON), running count, …
-- (in no order; the caller sorts).
local queues = {}
if ARGV[2] == '' then
  local all = redis.call('HGETALL', K_FLOW_CONFIG)
  for i = 1, #all, 2 do queues[#queues + 1] = { all[i], all[i + 1] } end
else
  local config = redis.call('HGET', K_FLOW_CONFIG, ARGV[2])
  if config then queues[1] = { ARGV[2], config } end
end
local out = {}
for _, q in ipairs(queues) do
  out[#out + 1] = q[1]
  out[#out + 1] = q[2]
  out[#out + 1] = queue_running(q[1])
end
return out
