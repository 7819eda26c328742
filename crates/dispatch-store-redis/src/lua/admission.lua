-- The admission of a gated claim (`dispatch_core::flow::Admission`, said in Lua; the claim
-- script only): gate states read as the claim meets them (`know`), candidates offered in order
-- (`admit`), the changed gates written back (`write_gates`), all inside the claim's one script
-- call, so two claims can not both admit past a gate. And the order candidates are offered in:
-- lanes round-robin (`flow::round_robin`), sequences merged by claim order (`flow::merge`).
--
-- A candidate is { member, score, ready, queue, name, tenant, ckey, climit }: its member and
-- score in its pair's ready set (`ready`, the key), tenant and ckey nil for none.

-- How far a claim reads past blocked jobs in one lane (`flow::LANE_SCAN_LIMIT`).
local LANE_SCAN_LIMIT = 1000

local gates = {}        -- gate -> { running, tat }: the states known to this admission
local gates_changed = {} -- gate -> true

-- The state of `gate` (`Admission::know`: read once, then the admission's own).
local function know(gate)
  local g = gates[gate]
  if g == nil then
    local v = redis.call('HMGET', gate_key(gate), 'running', 'tat')
    g = { running = tonumber(v[1]) or 0, tat = tonumber(v[2]) or 0 }
    gates[gate] = g
  end
  return g
end

-- `Rate::admit`: the new arrival time when a start at NOW may pass a gate at `tat`, else nil.
local function rate_admit(rate, tat)
  local from = math.max(tat, NOW)
  if from - NOW <= rate.tolerance then return from + rate.interval end
  return nil
end

-- Whether `gate` under `limits` would admit one more now (`Admission::open`).
local function gate_open(gate, limits)
  local g = know(gate)
  if limits.max and g.running >= limits.max then return false end
  return limits.rate == nil or rate_admit(limits.rate, g.tat) ~= nil
end

-- `Admission::lane_open`: whether a job of `tenant` (nil: none) in `queue` (config `conf`, nil
-- for none) could pass the queue's and the tenant's gates now.
local function lane_open(conf, queue, tenant)
  if conf == nil then return true end
  if conf.paused or not gate_open(queue_gate(queue), conf.limits) then return false end
  return tenant == nil or gate_open(tenant_gate(queue, tenant), conf.tenant_limits)
end

-- `Admission::key_open`: whether a job with key `ckey` and limit `climit` could start now.
local function key_open(ckey, climit)
  return know(key_gate(ckey)).running < climit
end

-- `Admission::admit`: whether every gate candidate `c` passes (its queue's config `conf`, nil
-- for none) admits it now; if so each counts it.
local function admit(conf, c)
  local steps = {}
  if conf then
    if conf.paused or conf.paused_names[c.name] then return false end
    steps[#steps + 1] = { queue_gate(c.queue), conf.limits }
    if c.tenant then steps[#steps + 1] = { tenant_gate(c.queue, c.tenant), conf.tenant_limits } end
  end
  if c.ckey then steps[#steps + 1] = { key_gate(c.ckey), { max = c.climit } } end
  local after = {}
  for i, step in ipairs(steps) do
    local g, limits = know(step[1]), step[2]
    if limits.max and g.running >= limits.max then return false end
    local tat = g.tat
    if limits.rate then
      tat = rate_admit(limits.rate, g.tat)
      if tat == nil then return false end
    end
    after[i] = { running = g.running + 1, tat = tat }
  end
  for i, step in ipairs(steps) do
    gates[step[1]] = after[i]
    gates_changed[step[1]] = true
  end
  return true
end

-- Write the gates the admission changed (`Admission::changed`). A gate that never passed a
-- rate keeps no arrival time, so it leaves no key once its running count is back at zero.
local function write_gates()
  for gate in pairs(gates_changed) do
    local g = gates[gate]
    if g.tat > 0 then
      redis.call('HSET', gate_key(gate), 'running', I(g.running), 'tat', I(g.tat))
    else
      redis.call('HSET', gate_key(gate), 'running', I(g.running))
    end
  end
end

-- Whether candidate `a` comes before `b` in claim order (`ClaimOrder`: the ready set's score,
-- then its member, whose run-at and sequence digits sort as numbers).
local function before(a, b)
  if a.score ~= b.score then return a.score < b.score end
  return a.member < b.member
end

-- Read up to `limit` candidates of pair (queue, name) from sorted set `key` (its ready set, or
-- one tenant's lane), best first, skipping jobs whose key gate is full and, when `untenanted`
-- (a set of the pair's laned tenants), jobs with a tenant (the lane of jobs without one); at
-- most LANE_SCAN_LIMIT entries are read. A job met there whose tenant has no lane was made due
-- by a version of the store that kept no lanes: it is put in its lane now, for later claims.
local function read_candidates(key, ready, queue, name, limit, untenanted)
  local out, scanned = {}, 0
  while #out < limit and scanned < LANE_SCAN_LIMIT do
    local take = math.min(LANE_SCAN_LIMIT - scanned, math.max(limit - #out, 16))
    local top = redis.call('ZRANGE', key, scanned, scanned + take - 1, 'WITHSCORES')
    for j = 1, #top, 2 do
      local member = top[j]
      local v = redis.call('HMGET', job_key(string.sub(member, 34)), 'tenant', 'ckey', 'climit')
      local tenant, ckey, climit = v[1] or nil, v[2] or nil, tonumber(v[3])
      if untenanted and tenant and not untenanted[tenant] then
        redis.call('ZADD', lane_key(queue, name, tenant), top[j + 1], member)
        redis.call('SADD', lanes_key(queue, name), tenant)
      end
      if not (untenanted and tenant) and (ckey == nil or key_open(ckey, climit)) then
        out[#out + 1] = { member = member, score = tonumber(top[j + 1]), ready = ready,
          queue = queue, name = name, tenant = tenant, ckey = ckey, climit = climit }
        if #out >= limit then break end
      end
    end
    scanned = scanned + #top / 2
    if #top / 2 < take then break end
  end
  return out
end

-- `flow::round_robin`: lanes ordered by their first candidate, then the first of every lane,
-- the second of every lane, and so on.
local function round_robin(lanes)
  local kept = {}
  for _, lane in ipairs(lanes) do
    if #lane > 0 then kept[#kept + 1] = lane end
  end
  table.sort(kept, function(a, b) return before(a[1], b[1]) end)
  local out, depth, more = {}, 1, true
  while more do
    more = false
    for _, lane in ipairs(kept) do
      if lane[depth] then
        out[#out + 1] = lane[depth]
        more = true
      end
    end
    depth = depth + 1
  end
  return out
end

-- `flow::merge`: the sequences' heads taken best first in claim order, each sequence keeping
-- its own order.
local function merge(sequences)
  local at, out = {}, {}
  for i = 1, #sequences do at[i] = 1 end
  while true do
    local best = nil
    for i, seq in ipairs(sequences) do
      local head = seq[at[i]]
      if head and (best == nil or before(head, sequences[best][at[best]])) then best = i end
    end
    if best == nil then return out end
    out[#out + 1] = sequences[best][at[best]]
    at[best] = at[best] + 1
  end
end
