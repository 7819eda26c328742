-- Claim a batch. ARGV[2] = limit, ARGV[3] = lease TTL (µs), ARGV[4] = lease token,
-- ARGV[5] = worker (its display form, `wkr_…`, as rescue messages name it), ARGV[6] = queue count, then the queues, then the job names.
-- Due jobs of each (queue, name) pair move from its sched set to its ready set first (at most
-- PROMOTE per pair per call); then the best `limit` of the pairs' ready sets are leased.
-- Answers {ids, hashes}: the claimed jobs' IDs, best first, and, for a claim of at most INLINE
-- jobs, their hashes; a larger claim's hashes are read by the caller in one pipeline (outside
-- the script, so their fields never pass through Lua).
local PROMOTE = 1000
-- Claims of at most this many jobs answer their hashes inline.
local INLINE = 8
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local token, worker = ARGV[4], ARGV[5]
local nq = tonumber(ARGV[6])
local queues, names, seen = {}, {}, {}
for i = 7, 6 + nq do
  if not seen['q' .. ARGV[i]] then seen['q' .. ARGV[i]] = true; queues[#queues + 1] = ARGV[i] end
end
for i = 7 + nq, #ARGV do
  if not seen['n' .. ARGV[i]] then seen['n' .. ARGV[i]] = true; names[#names + 1] = ARGV[i] end
end
if limit <= 0 or #queues == 0 or #names == 0 then return {} end

-- Move the due jobs of one pair from its sched set into its ready set.
local function promote(queue, name)
  local sched = sched_key(queue, name)
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', NOW, 'LIMIT', 0, PROMOTE)
  if #due == 0 then return end
  local ready = ready_key(queue, name)
  for _, id in ipairs(due) do
    local v = redis.call('HMGET', job_key(id), 'priority', 'run_at', 'seq')
    redis.call('ZADD', ready, -tonumber(v[1]), ready_member(tonumber(v[2]), tonumber(v[3]), id))
  end
  variadic('ZREM', sched, due)
end

local candidates, pairs_found = {}, 0
for _, queue in ipairs(queues) do
  for _, name in ipairs(names) do
    promote(queue, name)
    local ready = ready_key(queue, name)
    local top = redis.call('ZRANGE', ready, 0, limit - 1, 'WITHSCORES')
    if #top > 0 then pairs_found = pairs_found + 1 end
    for j = 1, #top, 2 do
      candidates[#candidates + 1] = { score = tonumber(top[j + 1]), member = top[j], ready = ready, queue = queue }
    end
  end
end
-- One pair's candidates come in claim order already; several pairs' are merged.
if pairs_found > 1 then
  table.sort(candidates, function(a, b)
    if a.score ~= b.score then return a.score < b.score end
    return a.member < b.member
  end)
end

local expires = NOW + ttl
local expires_s = I(expires)
-- How many jobs the claim takes from each ready set: always the set's best, so they leave it
-- by rank (ZREMRANGEBYRANK), not member by member.
local taken = {}
local out = {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  local id = string.sub(c.member, 34)
  local key = job_key(id)
  taken[c.ready] = (taken[c.ready] or 0) + 1
  -- `transition::claim`: running, one more attempt, the lease. An available job carries no
  -- cancel request (a job leaving `running` clears its own, see jobs.lua clear_lease).
  redis.call('HINCRBY', key, 'attempt', 1)
  redis.call('HSET', key, 'state', 'running', 'lease_owner', worker, 'lease_token', token,
    'lease_expires', expires_s)
  zadd(K_LEASES, expires, id)
  move_state(id, c.queue, 'available', 'running')
  out[#out + 1] = id
end
for ready, n in pairs(taken) do redis.call('ZREMRANGEBYRANK', ready, 0, n - 1) end
flush()
-- A small claim (an idle worker woken for one job) answers the hashes too, saving the round
-- trip of the pipelined read, which only pays for itself on a large batch.
if #out > INLINE then return { out, {} } end
local hashes = {}
for i, id in ipairs(out) do hashes[i] = redis.call('HGETALL', job_key(id)) end
return { out, hashes }
