-- Register worker ARGV[2] (`MembershipStore::register_worker`), or register it again: ARGV[3]
-- host, ARGV[4] pid, ARGV[5] concurrency, ARGV[6] version, then its queues. The worker is
-- active and last seen NOW, its registration replaced; one already known (active, draining or
-- gone) keeps its first started_at. Answers the worker's hash as stored (HGETALL).
local id = ARGV[2]
local key = worker_key(id)
local queues = {}
for i = 7, #ARGV do queues[#queues + 1] = ARGV[i] end
-- cjson spells an empty table as an object.
local queues_json = '[]'
if #queues > 0 then queues_json = cjson.encode(queues) end
local started = redis.call('HGET', key, 'started_at') or NOW_S
redis.call('HSET', key, 'id', id, 'host', ARGV[3], 'pid', ARGV[4], 'queues', queues_json,
  'concurrency', ARGV[5], 'version', ARGV[6], 'state', 'active', 'started_at', started,
  'last_seen', NOW_S)
redis.call('ZADD', K_WORKERS, 0, id)
redis.call('ZADD', K_WORKERS_SEEN, NOW, id)
redis.call('SREM', K_WORKERS_GONE, id)
redis.call('ZREM', K_WORKERS_GONE_SEEN, id)
return redis.call('HGETALL', key)
