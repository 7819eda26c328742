-- Start a run and its drive job (WorkflowStore::start_run). ARGV[2] = run id, ARGV[3] =
-- workflow name, ARGV[4] = version, ARGV[5] = input, ARGV[6], ARGV[7] = app and tenant,
-- ARGV[8] = idempotency key, ARGV[9] = parent run id (each optional in option form: '-' for
-- none, '+<value>'), then the drive job's 15 arguments as enqueue_jobs.lua takes them
-- (ARGV[10..24]).
-- Answers {1, id} (created, or a retried start) or {2, existing run id} (idempotency key).
local id, name, input = ARGV[2], ARGV[3], ARGV[5]
local idem = ARGV[8]
local function job_arg(field) return ARGV[10 + field] end
local drive = job_arg(0)

-- A retried start (same name, input and drive job) answers as the first did; any other use
-- of the run's ID is a reuse.
local stored = redis.call('HMGET', run_key(id), 'name', 'input', 'drive_job')
if stored[1] then
  if stored[1] == name and stored[2] == input and stored[3] == drive then return { 1, id } end
  return refuse('CONFLICT', 'run ' .. id .. ' already exists')
end
local ikey = idem ~= '-' and idem_key(name, string.sub(idem, 2)) or nil
if ikey then
  local existing = redis.call('GET', ikey)
  if existing then return { 2, existing } end
end
if redis.call('EXISTS', job_key(drive)) == 1 then
  return refuse('CONFLICT', 'the drive job\'s ID ' .. drive .. ' is already taken')
end

-- The drive job's unique key: a start is never a duplicate (enqueue.lua's held_by).
local ukey = job_arg(9)
local uk = ukey ~= '' and unique_key(job_arg(1), ukey) or nil
if uk then
  local holder = redis.call('GET', uk)
  if holder then
    local v = redis.call('HMGET', job_key(holder), 'state', 'unique_until')
    if v[1] == 'available' or v[1] == 'running' or (v[2] and tonumber(v[2]) > NOW) then
      return refuse('CONFLICT', 'the drive job\'s unique key is held by job ' .. holder)
    end
  end
end

-- The drive job, inserted as enqueue.lua inserts a job, with field `run` naming its run.
local window = job_arg(10)
insert_job({ id = drive, name = job_arg(1), queue = job_arg(2), payload = job_arg(3),
  priority = job_arg(4), run_at = resolve_run_at(job_arg(5), job_arg(6)),
  max_attempts = job_arg(7), timeout_us = job_arg(8) ~= '' and job_arg(8) or nil,
  unique_key = uk and ukey or nil,
  unique_until = (uk and window ~= '') and NOW + tonumber(window) or nil,
  app = option(job_arg(11)), tenant = option(job_arg(12)) }, { 'run', id })

local fields = { 'id', id, 'name', name, 'version', ARGV[4], 'state', 'running', 'input', input,
  'drive_job', drive, 'created_at', NOW_S, 'updated_at', NOW_S }
local function put(field, v)
  if v ~= '-' then fields[#fields + 1] = field; fields[#fields + 1] = string.sub(v, 2) end
end
put('app', ARGV[6]); put('tenant', ARGV[7]); put('idempotency_key', idem); put('parent', ARGV[9])
redis.call('HSET', run_key(id), unpack(fields))
redis.call('ZADD', K_RUNS, 0, id)
redis.call('ZADD', run_state_key('running'), 0, id)
if ikey then redis.call('SET', ikey, id) end
flush()
return { 1, id }
