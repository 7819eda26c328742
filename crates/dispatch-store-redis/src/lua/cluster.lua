-- Helpers of the cluster scripts (the worker registry and leadership terms), after the job
-- helpers; `script.rs` adds this file only to the cluster scripts. Keys: see prelude.lua.

-- `t` µs after NOW (a lease's end), stored at most as MAX_TIME (`Timestamp::saturating_add`).
local function after_now(t)
  local at = NOW + t
  if at > MAX_TIME then at = MAX_TIME end
  return at
end

-- Leadership `name` as stored ({ holder, term, elected_at, expires_at }, numbers as numbers),
-- or nil when it was never held.
local function read_leader(name)
  local v = redis.call('HMGET', leader_key(name), 'holder', 'term', 'elected_at', 'expires_at')
  if not v[1] then return nil end
  return { holder = v[1], term = tonumber(v[2]), elected_at = tonumber(v[3]),
           expires_at = tonumber(v[4]) }
end

-- Whether a term is valid at NOW: its lease has not expired (`cluster::is_valid`).
local function leader_valid(leader)
  return NOW < leader.expires_at
end

-- Whether `term` of `holder` may act at NOW while `current` (read_leader) is stored
-- (`cluster::holds`): it is the current term of the same holder, and still valid.
local function leader_holds(current, term, holder)
  return current ~= nil and current.term == term and current.holder == holder
    and leader_valid(current)
end

-- Store `leader` as leadership `name`; answers it as stored (HGETALL, as a plain read of the
-- leadership answers it).
local function write_leader(name, leader)
  local key = leader_key(name)
  redis.call('HSET', key, 'holder', leader.holder, 'term', I(leader.term),
    'elected_at', I(leader.elected_at), 'expires_at', I(leader.expires_at))
  return redis.call('HGETALL', key)
end

-- The next term of leadership `current` (nil: never held) for `holder`, from NOW for `ttl` µs
-- (`cluster::take`: the first term is 1).
local function next_term(current, holder, ttl)
  local term = 1
  if current then term = current.term + 1 end
  return { holder = holder, term = term, elected_at = NOW, expires_at = after_now(ttl) }
end

-- `leader` with its lease extended to NOW + `ttl` µs (`cluster::renewed`).
local function renewed(leader, ttl)
  leader.expires_at = after_now(ttl)
  return leader
end

-- The state of worker `id`, or nil when it is not registered.
local function worker_state(id)
  return redis.call('HGET', worker_key(id), 'state')
end

-- Record a write accepted under `term` of leadership `name` (`LeaderWrite`: term, NOW,
-- `action`), keeping the newest `kept` (LEADER_WRITES_KEPT) of the leadership's writes.
local function record_leader_write(name, term, action, kept)
  local key = leader_writes_key(name)
  redis.call('RPUSH', key, '{"term":' .. I(term) .. ',"at":' .. NOW_S .. ',"action":' ..
    cjson.encode(action) .. '}')
  redis.call('LTRIM', key, -kept, -1)
end
