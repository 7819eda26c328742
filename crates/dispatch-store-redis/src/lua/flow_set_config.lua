-- Store a queue's config (`FlowStore::set_queue_config`). ARGV[2] = the queue, ARGV[3] = its
-- config as JSON (validated by the caller). A queue's first config counts its running jobs
-- (count_running), in this call. Answers the queue gate's running count.
local queue = ARGV[2]
if redis.call('HSET', K_FLOW_CONFIG, queue, ARGV[3]) == 1 then count_running(queue) end
return queue_running(queue)
