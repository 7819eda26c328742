-- Remove worker ARGV[2] from the registry (`MembershipStore::deregister_worker`): its hash and
-- its place in every worker index. An unknown worker is no error.
local id = ARGV[2]
redis.call('DEL', worker_key(id))
redis.call('ZREM', K_WORKERS, id)
redis.call('ZREM', K_WORKERS_SEEN, id)
redis.call('SREM', K_WORKERS_GONE, id)
redis.call('ZREM', K_WORKERS_GONE_SEEN, id)
return 0
