-- Suspend a run (WorkflowStore::suspend_run, as dispatch-store-memory's events::suspend).
-- ARGV[2] = run id, ARGV[3] = drive job id, ARGV[4] = lease token, ARGV[5] = wake time (µs,
-- the earliest of the sleep and the waits' deadlines), ARGV[6] = what it waits for (JSON, ''
-- for nothing), ARGV[7] = wait count, then key, event name, correlation per wait.
-- Answers {0} cancel requested, {1} delivered, {2} suspended.
local id, job, token = ARGV[2], ARGV[3], ARGV[4]
local wake_at, waiting = tonumber(ARGV[5]), ARGV[6]
local n = tonumber(ARGV[7])
local waits = {}
for i = 0, n - 1 do
  waits[#waits + 1] = { key = ARGV[8 + i * 3], name = ARGV[9 + i * 3], corr = ARGV[10 + i * 3] }
end

local state, refused = fence(id, job, token)
if refused then return refused end
if redis.call('HEXISTS', run_key(id), 'cancel_requested') == 1 then return { 0 } end
-- Delivered while the run was being driven: the drive goes on, nothing suspends.
for _, w in ipairs(waits) do
  if checkpoint_data(id, w.key) then return { 1 } end
end
-- A kept event for one of the waits is delivered now.
for _, w in ipairs(waits) do
  local payload = take_kept(run_event_part(id, w.name, w.corr))
  if payload then
    write_checkpoint(id, w.key, payload)
    return { 1 }
  end
end

-- The listed waits become the run's only waits; of a key listed twice, the last counts.
remove_waits(id)
local last = {}
for i, w in ipairs(waits) do last[w.key] = i end
for i, w in ipairs(waits) do
  if last[w.key] == i then add_wait(id, w.key, w.name, w.corr) end
end
local key = run_key(id)
redis.call('HSET', key, 'state', 'suspended', 'updated_at', NOW_S)
if waiting ~= '' then redis.call('HSET', key, 'waiting', waiting) else redis.call('HDEL', key, 'waiting') end
move_run_state(id, state, 'suspended')

-- The drive job finishes as a snooze until wake_at (dispatch_core::transition::finish with
-- Outcome::Snooze): the attempt given back, the token recorded as the last finish so the
-- runtime's own finish answers AlreadyApplied; a job-level cancel request would end it
-- cancelled instead.
local lease = job_lease(job)
redis.call('HSET', job_key(job), 'last_finish', token)
if lease.cancel_requested then
  end_job(job, lease, 'running', 'cancelled')
else
  give_back(job, lease, wake_at)
end
flush()
return { 2 }
