-- Run helpers that move a run's drive job (after jobs.lua, whose job helpers they use):
-- waking it, a run's cancel request, re-arming it for a rewind or a migration.

-- Make drive job `job` due now when it waits (available, in its ready or sched set): taken out
-- of its set and put back at NOW, its queue woken. A running or ended job is left alone (the
-- memory store's wake_drive). The caller flushes.
local function wake_drive(job)
  local place = job_place(job)
  if not place or place.state ~= 'available' then return end
  unindex_available(job, place.queue, place.name, place.priority, place.run_at, place.seq,
    place.tenant)
  make_available(job, place, 'available', NOW)
end

-- Ask run `id` (which has not ended) to stop, for `reason`: the first reason is kept, and a
-- waiting drive job is made due now (WorkflowStore::request_run_cancel). Job-level cancels of
-- a live run's drive job come here too. The caller flushes.
local function run_cancel_request(id, reason)
  local key = run_key(id)
  local v = redis.call('HMGET', key, 'cancel_requested', 'drive_job')
  if not v[1] then
    redis.call('HSET', key, 'cancel_requested', reason, 'updated_at', NOW_S)
  end
  if v[2] then wake_drive(v[2]) end
end

-- Re-arm drive job `job` (not running) for a rewind or a migration: available at `run_at`,
-- attempts reset, no lease, no finish time, renamed to `name` when given (its ready and sched
-- members are per (queue, name): taken out under the old name, put back under the new one).
-- The caller flushes.
local function rearm_drive(job, name, run_at)
  local place = job_place(job)
  if not place then return end
  local from = place.state
  local key = job_key(job)
  if from == 'available' then
    unindex_available(job, place.queue, place.name, place.priority, place.run_at, place.seq,
    place.tenant)
  elseif from ~= 'running' then
    redis.call('HDEL', key, 'finished_at')
  end
  redis.call('HSET', key, 'attempt', '0')
  if name then
    redis.call('HSET', key, 'name', name)
    place.name = name
  end
  make_available(job, place, from, run_at)
end
