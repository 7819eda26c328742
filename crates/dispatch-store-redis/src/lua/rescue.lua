-- Rescue expired leases (`transition::rescue`). ARGV[2] = the most jobs to rescue, then fresh
-- DLQ entry ids for the jobs that die (a few: most rescued jobs have attempts left). When they
-- run out, the script stops before the next dying job and answers a last {0}: call again. Takes
-- the running jobs whose lease expired by NOW, oldest expiry first, and reclaims each (see
-- reclaim in jobs.lua) with a lease_expired error naming the lease's owner. Answers per job
-- {1, id} (available again), {2, id, dlq id} (promoted) or {3, id} (cancelled).
local limit = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW, 'LIMIT', 0, limit)
local out = {}
local next_dlq = dlq_ids(3)
for _, id in ipairs(expired) do
  local lease = job_lease(id)
  if not lease or lease.state ~= 'running' then
    -- An index entry without a running job holds no lease: drop it.
    redis.call('ZREM', K_LEASES, id)
  else
    local message = 'lease expired'
    if lease.owner then message = 'lease held by ' .. lease.owner .. ' expired' end
    local item = reclaim(id, lease, 'lease_expired', message, next_dlq)
    if not item then
      out[#out + 1] = { 0 }
      break
    end
    out[#out + 1] = item
  end
end
flush()
return out
