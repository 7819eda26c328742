-- Job helpers shared by every job transition (after prelude.lua and runs.lua).

-- Jobs ----------------------------------------------------------------------------------------
-- A job is a hash (see row.rs for the fields). Available jobs sit in their pair's ready set
-- when due, else in its sched set; running jobs in K_LEASES.

local function ready_member(run_at, seq, id)
  if run_at < 0 then run_at = 0 end
  return string.format('%017d%016d', run_at, seq) .. id
end

-- Put an available job into its pair's ready or sched set (its hash already says available).
local function index_available(id, queue, name, priority, run_at, seq)
  if run_at <= NOW then
    redis.call('ZADD', ready_key(queue, name), -priority, ready_member(run_at, seq, id))
  else
    redis.call('ZADD', sched_key(queue, name), run_at, id)
  end
  wake(queue)
end

-- Take an available job out of its pair's ready and sched sets.
local function unindex_available(id, queue, name, priority, run_at, seq)
  redis.call('ZREM', ready_key(queue, name), ready_member(run_at, seq, id))
  redis.call('ZREM', sched_key(queue, name), id)
end

-- The fields of job `id` that placing and moving it needs, or nil when there is no such job.
-- Returns { state, queue, name, priority, run_at, seq } (numbers as numbers).
local function job_place(id)
  local v = redis.call('HMGET', job_key(id), 'state', 'queue', 'name', 'priority', 'run_at', 'seq')
  if not v[1] then return nil end
  return { state = v[1], queue = v[2], name = v[3], priority = tonumber(v[4]),
           run_at = tonumber(v[5]), seq = tonumber(v[6]) }
end

-- Make a job (now in state `from`, placed as `place`) available at `run_at`.
local function make_available(id, place, from, run_at)
  redis.call('HSET', job_key(id), 'state', 'available', 'run_at', I(run_at))
  redis.call('HDEL', job_key(id), 'lease_owner', 'lease_token', 'lease_expires', 'cancel_requested')
  if from == 'running' then redis.call('ZREM', K_LEASES, id) end
  index_available(id, place.queue, place.name, place.priority, run_at, place.seq)
  move_state(id, place.queue, from, 'available')
end

-- End a job in a final state (completed, cancelled, dead) from state `from`.
local function end_job(id, place, from, state)
  local key = job_key(id)
  redis.call('HSET', key, 'state', state, 'finished_at', I(NOW))
  redis.call('HDEL', key, 'lease_owner', 'lease_token', 'lease_expires', 'cancel_requested')
  if from == 'running' then
    redis.call('ZREM', K_LEASES, id)
  elseif from == 'available' then
    unindex_available(id, place.queue, place.name, place.priority, place.run_at, place.seq)
  end
  redis.call('ZADD', K_FINISHED, NOW, id)
  move_state(id, place.queue, from, state)
end

-- Append an attempt's error to the job's history (JSON, times as integers).
local function record_error(id, attempt, kind, message)
  local key = job_key(id)
  local entry = '{"attempt":' .. I(attempt) .. ',"kind":' .. cjson.encode(kind) ..
    ',"message":' .. cjson.encode(message) .. ',"at":' .. I(NOW) .. '}'
  local errors = redis.call('HGET', key, 'errors')
  if not errors or errors == '[]' then
    errors = '[' .. entry .. ']'
  else
    errors = string.sub(errors, 1, -2) .. ',' .. entry .. ']'
  end
  redis.call('HSET', key, 'errors', errors)
end

-- The last error message of a job's history, or nil.
local function last_error_message(id)
  local errors = redis.call('HGET', job_key(id), 'errors')
  if not errors then return nil end
  local list = cjson.decode(errors)
  if #list == 0 then return nil end
  return list[#list].message
end

-- Make a job dead (from state `from`, placed as `place`) with its DLQ entry `dlq_id`, a copy
-- of the job as it died; a run it drives fails with the job's last error.
local function promote(id, place, from, dlq_id)
  end_job(id, place, from, 'dead')
  local key = job_key(id)
  local v = redis.call('HMGET', key, 'name', 'queue', 'payload', 'priority', 'attempt',
    'max_attempts', 'timeout_us', 'app', 'tenant', 'errors', 'run')
  local fields = { 'id', dlq_id, 'job_id', id, 'name', v[1], 'queue', v[2], 'payload', v[3],
    'priority', v[4], 'attempts', v[5], 'max_attempts', v[6], 'failed_at', I(NOW),
    'errors', v[10] or '[]' }
  local function put(field, value)
    if value then fields[#fields + 1] = field; fields[#fields + 1] = value end
  end
  put('timeout_us', v[7]); put('app', v[8]); put('tenant', v[9])
  redis.call('HSET', dlq_key(dlq_id), unpack(fields))
  redis.call('ZADD', K_DLQ, 0, dlq_id)
  redis.call('HSET', key, 'dlq_id', dlq_id)
  if v[11] then fail_driven_run(v[11], last_error_message(id) or 'the drive job died') end
end

-- The latest time stored exactly (row.rs MAX_TIME): later times are kept as this.
local MAX_TIME = 9007199254740991

-- A run-at as `RunAt::resolve` (dispatch_core) gives it: kind now|at|after, value in µs.
local function resolve_run_at(kind, value)
  local t = NOW
  if kind == 'at' then t = tonumber(value) elseif kind == 'after' then t = NOW + tonumber(value) end
  if t > MAX_TIME then t = MAX_TIME end
  return t
end

-- Store a new available job (`transition::enqueue`): its hash, the all-jobs index, its ready or
-- sched set and its state. `job` holds id, name, queue, payload, priority, run_at (number),
-- max_attempts, and optionally timeout_us, unique_key (the job's key, its unique key set to
-- the job), unique_until (number), app, tenant. `extra` is a flat list of more hash fields
-- and values (a run's drive job adds 'run', <run id>), or nil.
local function insert_job(job, extra)
  local id = job.id
  local seq = redis.call('INCR', K_SEQ)
  local fields = { 'id', id, 'name', job.name, 'queue', job.queue, 'payload', job.payload,
    'priority', job.priority, 'state', 'available', 'attempt', '0',
    'max_attempts', job.max_attempts, 'run_at', I(job.run_at), 'created_at', I(NOW),
    'seq', I(seq) }
  local function put(field, v)
    if v ~= nil then fields[#fields + 1] = field; fields[#fields + 1] = v end
  end
  put('timeout_us', job.timeout_us)
  if job.unique_key then
    put('unique_key', job.unique_key)
    if job.unique_until then put('unique_until', I(job.unique_until)) end
    redis.call('SET', unique_key(job.name, job.unique_key), id)
  end
  put('app', job.app)
  put('tenant', job.tenant)
  for i = 1, #(extra or {}), 2 do put(extra[i], extra[i + 1]) end
  redis.call('HSET', job_key(id), unpack(fields))
  redis.call('ZADD', K_JOBS, 0, id)
  index_available(id, job.queue, job.name, tonumber(job.priority), job.run_at, seq)
  add_state(id, job.queue, 'available')
end

-- An optional string argument as row.rs `option_arg` spells it ('-' none, '+value'), or nil.
local function option(arg)
  if arg == '-' then return nil end
  return string.sub(arg, 2)
end

-- The place of job `id` (as job_place) with its lease fields, in one read, or nil when there
-- is no such job.
local function job_lease(id)
  local v = redis.call('HMGET', job_key(id), 'state', 'queue', 'name', 'priority', 'run_at', 'seq',
    'lease_token', 'lease_owner', 'attempt', 'max_attempts', 'cancel_requested', 'last_finish')
  if not v[1] then return nil end
  return { state = v[1], queue = v[2], name = v[3], priority = tonumber(v[4]),
           run_at = tonumber(v[5]), seq = tonumber(v[6]), token = v[7], owner = v[8],
           attempt = tonumber(v[9]), max_attempts = tonumber(v[10]),
           cancel_requested = v[11] and true or false, last_finish = v[12] }
end

-- Whether `token` holds the lease of job `lease` (from job_lease): `transition::holds`. An
-- expired lease still holds until a rescue ends it.
local function holds(lease, token)
  return lease ~= nil and lease.state == 'running' and lease.token == token
end

-- Available again at `run_at` with the attempt returned (`transition::give_back`: snooze,
-- release). `lease` is the running job's job_lease.
local function give_back(id, lease, run_at)
  if lease.attempt > 0 then redis.call('HSET', job_key(id), 'attempt', I(lease.attempt - 1)) end
  make_available(id, lease, 'running', run_at)
end
