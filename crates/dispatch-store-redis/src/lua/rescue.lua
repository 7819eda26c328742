-- Rescue expired leases (`transition::rescue`). ARGV[2] = the most jobs to rescue, then fresh
-- DLQ entry ids for the jobs that die (a few: most rescued jobs have attempts left). When they
-- run out, the script stops before the next dying job and answers a last {0}: call again. Takes the running
-- jobs whose lease expired by NOW, oldest expiry first. Each records a lease_expired error
-- naming the lease's owner and keeps its attempt spent; it ends cancelled when a cancel was
-- requested (no DLQ entry, even on its last attempt), becomes available now while attempts
-- are left, and dies with a DLQ entry otherwise. Answers per job {1, id} (available again),
-- {2, id, dlq id} (promoted) or {3, id} (cancelled).
local limit = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW, 'LIMIT', 0, limit)
local out = {}
local next_dlq = 3
for _, id in ipairs(expired) do
  local lease = job_lease(id)
  local dies = lease and lease.state == 'running' and not lease.cancel_requested
    and lease.attempt >= lease.max_attempts
  if dies and next_dlq > #ARGV then
    out[#out + 1] = { 0 }
    break
  end
  if not lease or lease.state ~= 'running' then
    -- An index entry without a running job holds no lease: drop it.
    redis.call('ZREM', K_LEASES, id)
  else
    local message = 'lease expired'
    if lease.owner then message = 'lease held by ' .. lease.owner .. ' expired' end
    record_error(id, lease.attempt, 'lease_expired', message)
    if lease.cancel_requested then
      end_job(id, lease, 'running', 'cancelled')
      out[#out + 1] = { 3, id }
    elseif lease.attempt < lease.max_attempts then
      make_available(id, lease, 'running', NOW)
      out[#out + 1] = { 1, id }
    else
      local dlq_id = ARGV[next_dlq]
      next_dlq = next_dlq + 1
      promote(id, lease, 'running', dlq_id)
      out[#out + 1] = { 2, id, dlq_id }
    end
  end
end
flush()
return out
