-- How long until the next available job of some (queue, name) pairs is due, by the store's
-- clock. ARGV[2] = queue count, then the queues, then the names.
-- Answers 0 when a pair's ready set holds a job or its sched set's first is due, else the
-- microseconds until the earliest sched set's first run-at, or -1 when no job waits.
local nq = tonumber(ARGV[2])
local earliest = nil
for i = 3, 2 + nq do
  for j = 3 + nq, #ARGV do
    local queue, name = ARGV[i], ARGV[j]
    if redis.call('ZCARD', ready_key(queue, name)) > 0 then return 0 end
    local first = redis.call('ZRANGE', sched_key(queue, name), 0, 0, 'WITHSCORES')
    if #first > 0 then
      local at = tonumber(first[2])
      if at <= NOW then return 0 end
      if earliest == nil or at < earliest then earliest = at end
    end
  end
end
if earliest == nil then return -1 end
return earliest - NOW
