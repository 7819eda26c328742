-- Run helpers (after prelude.lua, before jobs.lua): the workflow key families, the lease fence
-- of drive calls, checkpoints, event waits, and ending or reopening a run. Job transitions use
-- them too: a drive job's death fails its run (fail_driven_run). Helpers that also move the
-- drive job need jobs.lua and live in drives.lua, after it.

-- Workflow keys -------------------------------------------------------------------------------
-- A string as a key part no other string's part can forge: its length, ':', itself.
local function kpart(s) return string.len(s) .. ':' .. s end
-- The run started with (workflow name, idempotency key): a string, the run's id.
local function idem_key(name, key) return P .. ':idem:' .. kpart(name) .. key end
-- A run's checkpoints: a hash, field 'd:<key>' -> data, 't:<key>' -> when written (µs).
local function ckpt_key(id) return P .. ':ckpt:' .. id end
-- Their write order: a sorted set, score = place (a rewritten key keeps it), member = key.
local function ckpt_order_key(id) return P .. ':ckptorder:' .. id end
-- A run's event waits: a hash, field checkpoint key -> the wait index key it is listed in.
local function run_waits_key(id) return P .. ':runwaits:' .. id end
-- (scope, event name, correlation) as a key suffix. The scope parts come in option form
-- ('-' unset, '+<value>' set), so an unset part never meets a set one, not even ''.
local function event_part(app, tenant, name, corr)
  return kpart(app) .. kpart(tenant) .. kpart(name) .. corr
end
-- Event waits of one event_part: a sorted set, score = registration order (K_EVENT_SEQ),
-- member = run id (32 hex digits) .. checkpoint key. Oldest wait first.
local function wait_index_key(part) return P .. ':waits:' .. part end
-- Kept events of one event_part: a sorted set, score and member = publish order (K_EVENT_SEQ).
local function kept_key(part) return P .. ':kept:' .. part end
-- Their payloads and expiries: a hash, 'p:<seq>' -> payload, 'e:<seq>' -> expiry (µs).
local function kept_data_key(part) return P .. ':keptdata:' .. part end
-- Kept events of every event_part by expiry, for retention: score keep-until (µs), member
-- "<seq>:<event_part>".
local K_KEPT_EXPIRY = P .. ':keptexpiry'
local function kept_expiry_member(part, seq) return seq .. ':' .. part end
-- The order of waits and kept events (one counter for both).
local K_EVENT_SEQ = P .. ':eventseq'

-- Runs ----------------------------------------------------------------------------------------
-- Ended runs awaiting retention: score finished_at, member id. A run leaves it when it is
-- pruned, reopened (rewind, migrate), or set aside by retention while its parent is live.
local K_RUNS_ENDED = P .. ':runsended'
-- Ended children of run `parent` set aside by retention while the parent is live: a set of
-- run ids, put back into K_RUNS_ENDED when the parent ends.
local function run_parked_key(parent) return P .. ':runparked:' .. parent end

local function is_final_run(state)
  return state == 'completed' or state == 'failed' or state == 'cancelled'
end

-- An optional hash field in option form ('-' when absent, '+<value>').
local function opt(value)
  if value then return '+' .. value end
  return '-'
end

-- Move run `id` from state `from` to `to` in the run indexes.
local function move_run_state(id, from, to)
  if from == to then return end
  redis.call('ZREM', run_state_key(from), id)
  redis.call('ZADD', run_state_key(to), 0, id)
end

-- The lease fence of every drive call (WorkflowStore: "Fenced by the drive job's lease"): run
-- `id` exists (else NOT_FOUND) and its drive job is `job` and running under `token` (else
-- LEASE_LOST), as dispatch_core::transition::holds says. Answers (state, nil) when the lease
-- holds, (nil, refusal) otherwise; it writes nothing.
local function fence(id, job, token)
  local v = redis.call('HMGET', run_key(id), 'state', 'drive_job')
  if not v[1] then return nil, refuse('NOT_FOUND', 'no run ' .. id) end
  local lost = refuse('LEASE_LOST', 'the drive of run ' .. id .. ' no longer holds its lease')
  if v[2] ~= job then return nil, lost end
  local j = redis.call('HMGET', job_key(job), 'state', 'lease_token')
  if j[1] ~= 'running' or j[2] ~= token then return nil, lost end
  return v[1], nil
end

-- Checkpoints ---------------------------------------------------------------------------------
-- Insert or replace checkpoint `key` of run `id`: a new key goes last in write order, a
-- rewritten one keeps its place (its data and time replaced).
local function write_checkpoint(id, key, data)
  redis.call('HSET', ckpt_key(id), 'd:' .. key, data, 't:' .. key, NOW_S)
  local order = ckpt_order_key(id)
  if redis.call('ZSCORE', order, key) then return end
  local last = redis.call('ZRANGE', order, -1, -1, 'WITHSCORES')
  local place = 1
  if #last > 0 then place = tonumber(last[2]) + 1 end
  redis.call('ZADD', order, place, key)
end

-- The data of checkpoint `key` of run `id`, or nil.
local function checkpoint_data(id, key)
  local data = redis.call('HGET', ckpt_key(id), 'd:' .. key)
  if data then return data end
  return nil
end

-- Every checkpoint of run `id` in write order, flat: key, data, time, key, data, time, ...
-- (two reads however many checkpoints: the order, then the whole hash).
local function checkpoints_of(id)
  local keys = redis.call('ZRANGE', ckpt_order_key(id), 0, -1)
  if #keys == 0 then return {} end
  local all = redis.call('HGETALL', ckpt_key(id))
  local fields = {}
  for i = 1, #all, 2 do fields[all[i]] = all[i + 1] end
  local out = {}
  for _, key in ipairs(keys) do
    out[#out + 1] = key
    out[#out + 1] = fields['d:' .. key] or ''
    out[#out + 1] = fields['t:' .. key] or NOW_S
  end
  return out
end

-- Drop the checkpoints of run `id` written after the one at place `place`.
local function drop_checkpoints_after(id, place)
  local order = ckpt_order_key(id)
  local later = redis.call('ZRANGEBYSCORE', order, '(' .. place, '+inf')
  if #later == 0 then return end
  local fields = {}
  for _, key in ipairs(later) do
    fields[#fields + 1] = 'd:' .. key
    fields[#fields + 1] = 't:' .. key
  end
  variadic('HDEL', ckpt_key(id), fields)
  redis.call('ZREMRANGEBYSCORE', order, '(' .. place, '+inf')
end

-- Event waits ---------------------------------------------------------------------------------
-- The event_part of a wait of run `id` on (name, corr): the run's own scope.
local function run_event_part(id, name, corr)
  local s = redis.call('HMGET', run_key(id), 'app', 'tenant')
  return event_part(opt(s[1]), opt(s[2]), name, corr)
end

-- Register a wait of run `id` on (name, corr) under checkpoint key `key`, the newest of its
-- event_part.
local function add_wait(id, key, name, corr)
  local index = wait_index_key(run_event_part(id, name, corr))
  local seq = redis.call('INCR', K_EVENT_SEQ)
  redis.call('ZADD', index, seq, id .. key)
  redis.call('HSET', run_waits_key(id), key, index)
end

-- Remove the wait of run `id` on checkpoint key `key`, if there is one.
local function remove_wait(id, key)
  local waits = run_waits_key(id)
  local index = redis.call('HGET', waits, key)
  if not index then return end
  redis.call('ZREM', index, id .. key)
  redis.call('HDEL', waits, key)
end

-- Remove every event wait of run `id` (once it ended, or replaced by a new suspension's).
local function remove_waits(id)
  local waits = run_waits_key(id)
  local all = redis.call('HGETALL', waits)
  for i = 1, #all, 2 do
    redis.call('ZREM', all[i + 1], id .. all[i])
  end
  redis.call('DEL', waits)
end

-- Take the oldest unexpired kept event of `part`: its payload, or nil. Expired events met on
-- the way are dropped (WorkflowStore::publish_event: expired once the clock reaches its
-- publish time plus keep_for).
local function take_kept(part)
  local kept, data = kept_key(part), kept_data_key(part)
  while true do
    local first = redis.call('ZRANGE', kept, 0, 0)
    if #first == 0 then return nil end
    local seq = first[1]
    local v = redis.call('HMGET', data, 'p:' .. seq, 'e:' .. seq)
    redis.call('ZREM', kept, seq)
    redis.call('HDEL', data, 'p:' .. seq, 'e:' .. seq)
    redis.call('ZREM', K_KEPT_EXPIRY, kept_expiry_member(part, seq))
    if v[1] and v[2] and tonumber(v[2]) > NOW then return v[1] end
  end
end

-- Drop up to `max` expired kept events from the head of `part` (publish order), stopping at
-- the first unexpired one: a publish tidies its own (scope, name, correlation), so events
-- nobody took do not pile up where events keep coming. Elsewhere they stay until a wait of
-- theirs looks (take_kept).
local function prune_kept(part, max)
  local kept, data = kept_key(part), kept_data_key(part)
  for _ = 1, max do
    local first = redis.call('ZRANGE', kept, 0, 0)
    if #first == 0 then return end
    local seq = first[1]
    local expires = redis.call('HGET', data, 'e:' .. seq)
    if expires and tonumber(expires) > NOW then return end
    redis.call('ZREM', kept, seq)
    redis.call('HDEL', data, 'p:' .. seq, 'e:' .. seq)
    redis.call('ZREM', K_KEPT_EXPIRY, kept_expiry_member(part, seq))
  end
end

-- Ending and reopening ------------------------------------------------------------------------
-- The ended children retention set aside while run `id` was live go back to K_RUNS_ENDED, now
-- that it has ended (one SMEMBERS per run end, of a key that rarely exists).
local function unpark_children(id)
  local parked = run_parked_key(id)
  local children = redis.call('SMEMBERS', parked)
  if #children == 0 then return end
  for _, child in ipairs(children) do
    local v = redis.call('HMGET', run_key(child), 'state', 'finished_at')
    if v[1] and is_final_run(v[1]) and v[2] then redis.call('ZADD', K_RUNS_ENDED, v[2], child) end
  end
  redis.call('DEL', parked)
end

-- End run `id` (now in state `from`) in final `state`, with `field` ('output' or 'error') set to
-- `value`: its waits go, it waits for nothing (dispatch-store-memory's run::end).
local function end_run_record(id, from, state, field, value)
  local key = run_key(id)
  redis.call('HSET', key, 'state', state, field, value, 'updated_at', NOW_S,
    'finished_at', NOW_S)
  redis.call('HDEL', key, 'waiting')
  move_run_state(id, from, state)
  remove_waits(id)
  redis.call('ZADD', K_RUNS_ENDED, NOW, id)
  unpark_children(id)
end

-- Make run `id` (now in state `from`) running again: output, error, finish time, cancel
-- request and waiting cleared (the memory store's run::reopen).
local function reopen_run(id, from)
  local key = run_key(id)
  redis.call('HSET', key, 'state', 'running', 'updated_at', NOW_S)
  redis.call('HDEL', key, 'output', 'error', 'finished_at', 'cancel_requested', 'waiting')
  move_run_state(id, from, 'running')
  redis.call('ZREM', K_RUNS_ENDED, id)
end

-- The run driven by a job that just died fails with `message`, unless it has ended already.
local function fail_driven_run(id, message)
  local state = redis.call('HGET', run_key(id), 'state')
  if not state or is_final_run(state) then return end
  end_run_record(id, state, 'failed', 'error', message)
end
