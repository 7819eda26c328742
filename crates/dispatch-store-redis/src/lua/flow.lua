-- Flow control helpers every script shares (after prelude.lua, before jobs.lua, whose
-- clear_lease releases gates): gate names, counting a running job into its gates and out of
-- them, queue configs. The rules are `dispatch_core::flow`'s; the claim's admission is
-- `lua/admission.lua`.
--
-- A job hash carries its concurrency key as `ckey` and `climit` (absent without one), the last
-- progress its handler reported as `progress` (JSON), and a `counted` mark while it runs
-- counted: '1' when it holds one running slot in each of its held gates (`flow::held_gates`:
-- its queue's, its tenant's within the queue, its key's), because a gated claim of its
-- configured queue started it or its queue's first config counted it; 'k' when it holds a slot
-- in its key's gate only (a gated claim started it in a queue without a config). It gives them
-- back when it leaves running, by whatever path (clear_lease in jobs.lua); '' is no mark.

-- Gate names as `dispatch_core::flow::{queue_gate, tenant_gate, key_gate}` spell them (␟ is
-- U+001F).
local function queue_gate(queue) return 'q\31' .. queue end
local function tenant_gate(queue, tenant) return 't\31' .. queue .. '\31' .. tenant end
local function key_gate(key) return 'k\31' .. key end

-- The gates a counted job holds a running slot in (`flow::held_gates`); tenant and key nil for
-- none.
local function held_gates(queue, tenant, key)
  local gates = { queue_gate(queue) }
  if tenant then gates[#gates + 1] = tenant_gate(queue, tenant) end
  if key then gates[#gates + 1] = key_gate(key) end
  return gates
end

-- A job's `counted` field (an HMGET answer) as its mark, nil for none.
local function counted_mark(v)
  if v and v ~= '' then return v end
  return nil
end

-- Give back one running slot of `gate` (never below zero; a gate at zero has no field).
local function gate_release(gate)
  local key = gate_key(gate)
  local n = redis.call('HINCRBY', key, 'running', -1)
  if n <= 0 then redis.call('HDEL', key, 'running') end
end

-- Counted job `id` of `queue` (its mark `mark`) leaves running: each gate it holds a slot in
-- gives it back. The caller clears the mark (clear_lease writes it with the transition).
local function release_gates(id, queue, mark)
  local v = redis.call('HMGET', job_key(id), 'tenant', 'ckey')
  if mark == 'k' then
    if v[2] then gate_release(key_gate(v[2])) end
    return
  end
  for _, gate in ipairs(held_gates(queue, v[1] or nil, v[2] or nil)) do gate_release(gate) end
end

-- Count the running jobs of `queue` that are not counted yet into their held gates (a job
-- holding its key's slot only, into its queue's and tenant's) and mark them counted: a queue's
-- first config holds from the next claim on. Running jobs are K_LEASES, bounded by the
-- workers' slots, walked by rank.
local function count_running(queue)
  local CHUNK = 500
  local start = 0
  while true do
    local ids = redis.call('ZRANGE', K_LEASES, start, start + CHUNK - 1)
    for _, id in ipairs(ids) do
      local key = job_key(id)
      local v = redis.call('HMGET', key, 'state', 'queue', 'counted', 'tenant', 'ckey')
      if v[1] == 'running' and v[2] == queue and v[3] ~= '1' then
        -- A job holding its key's slot already ('k') takes no second one.
        local ckey = v[3] ~= 'k' and v[5] or nil
        for _, gate in ipairs(held_gates(queue, v[4] or nil, ckey)) do
          redis.call('HINCRBY', gate_key(gate), 'running', 1)
        end
        redis.call('HSET', key, 'counted', '1')
      end
    end
    if #ids < CHUNK then return end
    start = start + CHUNK
  end
end

-- `QueueConfig::new(queue)` as serde writes it: no limits, not fair, not paused.
local function default_config(queue)
  local none = '{"max_running":null,"rate":null}'
  return '{"queue":' .. cjson.encode(queue) .. ',"limits":' .. none .. ',"tenant_limits":' ..
    none .. ',"fair":false,"paused":false,"paused_names":[]}'
end

-- Give `queue` a default config when it has none, counting its running jobs (a first config);
-- answers whether it did.
local function ensure_config(queue)
  if redis.call('HSETNX', K_FLOW_CONFIG, queue, default_config(queue)) == 0 then return false end
  count_running(queue)
  return true
end

local function is_null(v) return v == nil or v == cjson.null end

-- A `Rate` (serde form) as its spacing and tolerance in µs (`Rate::interval_micros`,
-- `Rate::tolerance_micros`); nil for none.
local function decode_rate(rate)
  if is_null(rate) then return nil end
  local per = rate.per.secs * 1000000 + math.floor(rate.per.nanos / 1000)
  local interval = math.max(1, math.floor(per / math.max(rate.jobs, 1)))
  return { interval = interval, tolerance = interval * (math.max(rate.burst, 1) - 1) }
end

-- `Limits` (serde form) as { max = the running limit or nil, rate = decode_rate }.
local function decode_limits(limits)
  local max = nil
  if not is_null(limits.max_running) then max = limits.max_running end
  return { max = max, rate = decode_rate(limits.rate) }
end

-- A stored config (JSON) as the claim reads it: { limits, tenant_limits, paused,
-- paused_names (a set), in_lanes (`QueueConfig::in_lanes`) }.
local function decode_config(json)
  local c = cjson.decode(json)
  local names = {}
  for _, name in ipairs(c.paused_names) do names[name] = true end
  local tenant_limits = decode_limits(c.tenant_limits)
  return { limits = decode_limits(c.limits), tenant_limits = tenant_limits,
    paused = c.paused == true, paused_names = names,
    in_lanes = c.fair == true or tenant_limits.max ~= nil or tenant_limits.rate ~= nil }
end

-- The counted running jobs of `queue`'s gate.
local function queue_running(queue)
  return tonumber(redis.call('HGET', gate_key(queue_gate(queue)), 'running')) or 0
end
