-- Heartbeat a batch of leases (`transition::renew`). ARGV[2] = lease TTL (µs), then a job id
-- and a lease token per lease. A lease renews while its token holds the job (running under
-- it; an expired lease not yet rescued still holds): its expiry becomes NOW + TTL. Answers one
-- code per lease: 0 lost, 1 renewed, 2 renewed with a cancel request.
local expires = NOW + tonumber(ARGV[2])
if expires > MAX_TIME then expires = MAX_TIME end
local expires_s = I(expires)
local out = {}
for i = 3, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local v = redis.call('HMGET', job_key(id), 'state', 'lease_token', 'cancel_requested')
  if v[1] == 'running' and v[2] == token then
    redis.call('HSET', job_key(id), 'lease_expires', expires_s)
    redis.call('ZADD', K_LEASES, expires, id)
    out[#out + 1] = v[3] == '1' and 2 or 1
  else
    out[#out + 1] = 0
  end
end
return out
