-- How long until the next available job of some (queue, name) pairs is due, by the store's
-- clock. ARGV[2] = queue count, then the queues, then the names. Paused queues and paused names
-- (flow configs) are left out, so an idle worker does not spin on them.
-- Answers 0 when a pair's ready set holds a job or its sched set's first is due, else the
-- microseconds until the earliest sched set's first run-at, or -1 when no job waits.
local nq = tonumber(ARGV[2])
local queues = {}
for i = 3, 2 + nq do queues[#queues + 1] = ARGV[i] end
local stored = redis.call('HMGET', K_FLOW_CONFIG, unpack(queues))

-- Whether pair (queue, name) is paused by the queue's config (decoded; false for none).
local function paused(config, name)
  if not config then return false end
  return config.paused or config.paused_names[name]
end

local earliest = nil
for i, queue in ipairs(queues) do
  local config = stored[i] and decode_config(stored[i])
  for j = 3 + nq, #ARGV do
    local name = ARGV[j]
    if not paused(config, name) then
      if redis.call('ZCARD', ready_key(queue, name)) > 0 then return 0 end
      local first = redis.call('ZRANGE', sched_key(queue, name), 0, 0, 'WITHSCORES')
      if #first > 0 then
        local at = tonumber(first[2])
        if at <= NOW then return 0 end
        if earliest == nil or at < earliest then earliest = at end
      end
    end
  end
end
if earliest == nil then return -1 end
return earliest - NOW
