-- Claim a batch. ARGV[2] = limit, ARGV[3] = lease TTL (µs), ARGV[4] = lease token,
-- ARGV[5] = worker (its display form, `wkr_…`, as rescue messages name it), ARGV[6] = queue count, then the queues, then the job names.
-- Due jobs of each (queue, name) pair move from its sched set to its ready set first (at most
-- PROMOTE per pair per call); then the best `limit` of the pairs' ready sets are leased. When a
-- requested queue has a flow config, the claim takes the gated path instead (claim_gated:
-- `flow::Admission`'s rules, `lua/admission.lua`); without one the plain path pays one HMGET.
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
    local v = redis.call('HMGET', job_key(id), 'priority', 'run_at', 'seq', 'tenant')
    local member = ready_member(tonumber(v[2]), tonumber(v[3]), id)
    redis.call('ZADD', ready, -tonumber(v[1]), member)
    if v[4] then
      redis.call('ZADD', lane_key(queue, name, v[4]), -tonumber(v[1]), member)
      redis.call('SADD', lanes_key(queue, name), v[4])
    end
  end
  variadic('ZREM', sched, due)
end

local expires = NOW + ttl
local expires_s = I(expires)

-- `transition::claim` of available job `id` (its ready member `member`) of `queue` and `name`:
-- running, one more attempt, the lease; `counted` its mark (flow.lua) when a gated claim
-- admitted it through a gate, else nil. An available job carries no cancel request (a job
-- leaving `running` clears its own, see jobs.lua clear_lease). Its ready entry is the caller's
-- to remove; its tenant lane's entry (`tenant`, nil for none) is removed here.
local function lease_job(id, member, queue, name, counted, tenant)
  local key = job_key(id)
  redis.call('HINCRBY', key, 'attempt', 1)
  if counted then
    redis.call('HSET', key, 'state', 'running', 'lease_owner', worker, 'lease_token', token,
      'lease_expires', expires_s, 'counted', counted)
  else
    redis.call('HSET', key, 'state', 'running', 'lease_owner', worker, 'lease_token', token,
      'lease_expires', expires_s)
  end
  if tenant then lane_write(queue, name, tenant, member, false) end
  zadd(K_LEASES, expires, id)
  move_state(id, queue, 'available', 'running')
end

-- Answer the claimed jobs: {ids, hashes}. A small claim (an idle worker woken for one job)
-- answers the hashes too, saving the round trip of the pipelined read, which only pays for
-- itself on a large batch.
local function answer(out)
  if #out > INLINE then return { out, {} } end
  local hashes = {}
  for i, id in ipairs(out) do hashes[i] = redis.call('HGETALL', job_key(id)) end
  return { out, hashes }
end

-- The gated claim: per pair (paused queues and names left out), the pair's candidates in claim
-- order, or its tenant lanes round-robin for a queue in lanes; all of them merged by claim
-- order and offered to the admission until `limit` are admitted; those claimed and counted,
-- the changed gates written.
local function claim_gated(configs)
  local sequences = {}
  for _, queue in ipairs(queues) do
    local conf = configs[queue]
    for _, name in ipairs(names) do
      promote(queue, name)
      local ready = ready_key(queue, name)
      local open = conf == nil or (not conf.paused_names[name] and lane_open(conf, queue, nil))
      if open and conf and conf.in_lanes then
        local lanes, laned = {}, {}
        for _, tenant in ipairs(redis.call('SMEMBERS', lanes_key(queue, name))) do
          laned[tenant] = true
          if lane_open(conf, queue, tenant) then
            lanes[#lanes + 1] = read_candidates(lane_key(queue, name, tenant), ready, queue, name,
              limit, nil)
          end
        end
        lanes[#lanes + 1] = read_candidates(ready, ready, queue, name, limit, laned)
        sequences[#sequences + 1] = round_robin(lanes)
      elseif open then
        sequences[#sequences + 1] = read_candidates(ready, ready, queue, name, limit, nil)
      end
    end
  end
  local out = {}
  for _, c in ipairs(merge(sequences)) do
    if #out >= limit then break end
    local conf = configs[c.queue]
    if admit(conf, c) then
      local id = string.sub(c.member, 34)
      -- A job of a queue with a config holds all its gates; of one without, its key's only.
      local mark = (conf and '1') or (c.ckey and 'k') or nil
      lease_job(id, c.member, c.queue, c.name, mark, c.tenant)
      zrem(c.ready, c.member)
      out[#out + 1] = id
    end
  end
  write_gates()
  flush()
  return answer(out)
end

-- The configs of the requested queues (one HMGET: the plain path's only extra cost).
do
  local stored = redis.call('HMGET', K_FLOW_CONFIG, unpack(queues))
  local configs, gated = {}, false
  for i, queue in ipairs(queues) do
    if stored[i] then
      configs[queue] = decode_config(stored[i])
      gated = true
    end
  end
  if gated then return claim_gated(configs) end
end

local candidates, pairs_found = {}, 0
for _, queue in ipairs(queues) do
  for _, name in ipairs(names) do
    promote(queue, name)
    local ready = ready_key(queue, name)
    local top = redis.call('ZRANGE', ready, 0, limit - 1, 'WITHSCORES')
    if #top > 0 then pairs_found = pairs_found + 1 end
    for j = 1, #top, 2 do
      candidates[#candidates + 1] = { score = tonumber(top[j + 1]), member = top[j], ready = ready,
        queue = queue, name = name }
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

-- How many jobs the claim takes from each ready set: always the set's best, so they leave it
-- by rank (ZREMRANGEBYRANK), not member by member.
local taken = {}
-- Per ready set, whether its pair has tenant lanes: only then is a job's tenant read (a due
-- job with a tenant is always in a lane), so queues without tenants pay one EXISTS per pair.
local laned = {}
local out = {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  local id = string.sub(c.member, 34)
  taken[c.ready] = (taken[c.ready] or 0) + 1
  if laned[c.ready] == nil then
    laned[c.ready] = redis.call('EXISTS', lanes_key(c.queue, c.name)) == 1
  end
  local tenant = laned[c.ready] and redis.call('HGET', job_key(id), 'tenant') or nil
  lease_job(id, c.member, c.queue, c.name, nil, tenant)
  out[#out + 1] = id
end
for ready, n in pairs(taken) do redis.call('ZREMRANGEBYRANK', ready, 0, n - 1) end
flush()
return answer(out)
