-- Run helpers that job transitions share (after prelude.lua, before jobs.lua): a drive job's
-- death fails its run. The workflow scripts' own helpers live here too.

local function is_final_run(state)
  return state == 'completed' or state == 'failed' or state == 'cancelled'
end

-- Move run `id` from state `from` to `to` in the run indexes.
local function move_run_state(id, from, to)
  if from == to then return end
  redis.call('ZREM', run_state_key(from), id)
  redis.call('ZADD', run_state_key(to), 0, id)
end

-- Remove every event wait of run `id` (its waits can take no event once it ended).
local function remove_waits(id)
  -- Filled in with the event waits layout (events.lua).
end

local function run_cancel_request(id, reason) error('run_cancel_request is written with the workflow scripts') end

-- The run driven by a job that just died fails with `message`, unless it has ended already.
local function fail_driven_run(id, message)
  local key = run_key(id)
  local state = redis.call('HGET', key, 'state')
  if not state or is_final_run(state) then return end
  redis.call('HSET', key, 'state', 'failed', 'error', message, 'updated_at', I(NOW),
    'finished_at', I(NOW))
  redis.call('HDEL', key, 'waiting')
  move_run_state(id, state, 'failed')
  remove_waits(id)
end
