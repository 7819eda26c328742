-- Tell worker ARGV[2] to drain (`MembershipStore::drain_worker`): an active worker becomes
-- draining (it learns at its next heartbeat); a draining or gone one stays as it is. Refuses
-- NOT_FOUND for an unknown worker.
local id = ARGV[2]
local state = worker_state(id)
if not state then return refuse('NOT_FOUND', 'no worker ' .. id) end
if state == 'active' then redis.call('HSET', worker_key(id), 'state', 'draining') end
return 0
