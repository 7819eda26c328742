-- One heartbeat of worker ARGV[2] (`MembershipStore::heartbeat_worker`): unless it is gone or
-- unknown (then it is not revived, and nothing of it changes), its last_seen becomes NOW; then
-- its leases are renewed exactly as a lease heartbeat renews them (renew_leases in jobs.lua,
-- `transition::renew`). ARGV[3] = lease TTL (µs), then a job id and a lease token per lease.
-- Answers { state (active|draining|gone), { one code per lease: 0 lost, 1 renewed, 2 renewed
-- with a cancel request } }.
local id = ARGV[2]
local state = worker_state(id)
if state and state ~= 'gone' then
  redis.call('HSET', worker_key(id), 'last_seen', NOW_S)
  redis.call('ZADD', K_WORKERS_SEEN, NOW, id)
else
  state = 'gone'
end
return { state, renew_leases(tonumber(ARGV[3]), 4) }
