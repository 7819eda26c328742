-- Job helpers shared by every job transition (after prelude.lua and runs.lua).

-- Jobs ----------------------------------------------------------------------------------------
-- A job is a hash (see row.rs for the fields). Available jobs sit in their pair's ready set
-- when due, else in its sched set; running jobs in K_LEASES.

local function ready_member(run_at, seq, id)
  if run_at < 0 then run_at = 0 end
  return string.format('%017d%016d', run_at, seq) .. id
end

-- Put an available job into its pair's ready or sched set (its hash already says available),
-- and a due job with a tenant (nil: none) into its tenant lane too.
local function index_available(id, queue, name, priority, run_at, seq, tenant)
  if run_at <= NOW then
    local member = ready_member(run_at, seq, id)
    zadd(ready_key(queue, name), -priority, member)
    if tenant then lane_write(queue, name, tenant, member, -priority) end
  else
    zadd(sched_key(queue, name), run_at, id)
  end
  wake(queue)
end

-- Take an available job out of its pair's ready and sched sets (and its tenant lane, for a
-- job with a tenant; nil: none).
local function unindex_available(id, queue, name, priority, run_at, seq, tenant)
  local member = ready_member(run_at, seq, id)
  zrem(ready_key(queue, name), member)
  zrem(sched_key(queue, name), id)
  if tenant then lane_write(queue, name, tenant, member, false) end
end

-- The fields of job `id` that placing and moving it needs, or nil when there is no such job.
-- Returns { state, queue, name, priority, run_at, seq, tenant, counted } (numbers as numbers,
-- tenant nil for none, counted its mark or nil: see flow.lua).
local function job_place(id)
  local v = redis.call('HMGET', job_key(id), 'state', 'queue', 'name', 'priority', 'run_at', 'seq',
    'tenant', 'counted')
  if not v[1] then return nil end
  return { state = v[1], queue = v[2], name = v[3], priority = tonumber(v[4]),
           run_at = tonumber(v[5]), seq = tonumber(v[6]), tenant = v[7] or nil,
           counted = counted_mark(v[8]) }
end

-- A job leaving `running`: its lease fields stay behind (row.rs reads a lease, and a cancel
-- request, only on a running job; the next claim overwrites them), which saves a command per
-- finish; a cancel request ('1') is cleared ('') when there is one (`place` from job_lease
-- says), in the transition's own HSET, so no later attempt inherits it. A counted job gives
-- back its gates' running slots (flow.lua release_gates) and its mark is cleared, in the same
-- HSET.
local function clear_lease(id, fields, place)
  if place.counted then
    release_gates(id, place.queue, place.counted)
    fields[#fields + 1] = 'counted'
    fields[#fields + 1] = ''
  end
  if place.cancel_requested then
    fields[#fields + 1] = 'cancel_requested'
    fields[#fields + 1] = ''
  end
end

-- HSET of `fields` and the flat field/value list `extra` (may be nil), in one command.
local function hset_with(key, fields, extra)
  for i = 1, #(extra or {}) do fields[#fields + 1] = extra[i] end
  redis.call('HSET', key, unpack(fields))
end

-- Make a job (now in state `from`, placed as `place`) available at `run_at`; `extra` more
-- fields to write with it (a finish's `last_finish`), or nil.
local function make_available(id, place, from, run_at, extra)
  local key = job_key(id)
  local fields = { 'state', 'available', 'run_at', I(run_at) }
  if from == 'running' then
    clear_lease(id, fields, place)
    zrem(K_LEASES, id)
  end
  hset_with(key, fields, extra)
  index_available(id, place.queue, place.name, place.priority, run_at, place.seq, place.tenant)
  move_state(id, place.queue, from, 'available')
end

-- End a job in a final state (completed, cancelled, dead) from state `from`; `extra` as for
-- make_available. move_state puts it in its state's ID-ordered index (listings) and in its
-- finished_key set by finish time (retention).
local function end_job(id, place, from, state, extra)
  local key = job_key(id)
  local fields = { 'state', state, 'finished_at', NOW_S }
  if from == 'running' then
    clear_lease(id, fields, place)
    zrem(K_LEASES, id)
  elseif from == 'available' then
    unindex_available(id, place.queue, place.name, place.priority, place.run_at, place.seq,
      place.tenant)
  end
  hset_with(key, fields, extra)
  move_state(id, place.queue, from, state)
end

-- Append an attempt's error to the job's history (JSON, times as integers).
local function record_error(id, attempt, kind, message)
  local key = job_key(id)
  local entry = '{"attempt":' .. I(attempt) .. ',"kind":' .. cjson.encode(kind) ..
    ',"message":' .. cjson.encode(message) .. ',"at":' .. NOW_S .. '}'
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
local function promote(id, place, from, dlq_id, extra)
  end_job(id, place, from, 'dead', extra)
  local key = job_key(id)
  local v = redis.call('HMGET', key, 'name', 'queue', 'payload', 'priority', 'attempt',
    'max_attempts', 'timeout_us', 'app', 'tenant', 'errors', 'run')
  local fields = { 'id', dlq_id, 'job_id', id, 'name', v[1], 'queue', v[2], 'payload', v[3],
    'priority', v[4], 'attempts', v[5], 'max_attempts', v[6], 'failed_at', NOW_S,
    'errors', v[10] or '[]' }
  local function put(field, value)
    if value then fields[#fields + 1] = field; fields[#fields + 1] = value end
  end
  put('timeout_us', v[7]); put('app', v[8]); put('tenant', v[9])
  redis.call('HSET', dlq_key(dlq_id), unpack(fields))
  redis.call('ZADD', K_DLQ, 0, dlq_id)
  redis.call('ZADD', K_DLQ_FAILED, NOW, dlq_id)
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

-- The next enqueue sequence number. Numbers are taken from K_SEQ 1,000 at a time per script
-- call (one INCRBY, not one INCR per job); the ones a call leaves unused are skipped, which
-- keeps the order.
local seq_next, seq_last = 1, 0
local function next_seq()
  if seq_next > seq_last then
    seq_last = redis.call('INCRBY', K_SEQ, 1000)
    seq_next = seq_last - 999
  end
  seq_next = seq_next + 1
  return seq_next - 1
end

-- Store a new available job (`transition::enqueue`): its hash, the all-jobs index, its ready or
-- sched set and its state. `job` holds id, name, queue, payload, priority, run_at (number),
-- max_attempts, and optionally timeout_us, unique_key (the job's key, its unique key set to
-- the job), unique_until (number), app, tenant, ckey and climit (a concurrency key and its
-- limit). `extra` is a flat list of more hash fields
-- and values (a run's drive job adds 'run', <run id>), or nil.
local function insert_job(job, extra)
  local id = job.id
  local seq = next_seq()
  -- Hashes this small are listpacks, searched front to back: the fields transitions read
  -- come first. Fields a later transition writes (the lease, `last_finish`, a cancel request)
  -- are absent until then: every argument costs the script, and a read of a missing field
  -- answers nil, which no token equals.
  local fields = { 'state', 'available', 'queue', job.queue, 'attempt', '0',
    'max_attempts', job.max_attempts, 'name', job.name, 'priority', job.priority,
    'run_at', I(job.run_at), 'seq', I(seq), 'id', id, 'created_at', NOW_S,
    'payload', job.payload }
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
  if job.ckey then
    put('ckey', job.ckey)
    put('climit', job.climit)
  end
  for i = 1, #(extra or {}), 2 do put(extra[i], extra[i + 1]) end
  redis.call('HSET', job_key(id), unpack(fields))
  zadd(K_JOBS, 0, id)
  index_available(id, job.queue, job.name, tonumber(job.priority), job.run_at, seq, job.tenant)
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
    'lease_token', 'lease_owner', 'attempt', 'max_attempts', 'cancel_requested', 'last_finish',
    'tenant', 'counted')
  if not v[1] then return nil end
  return { state = v[1], queue = v[2], name = v[3], priority = tonumber(v[4]),
           run_at = tonumber(v[5]), seq = tonumber(v[6]), token = v[7], owner = v[8],
           attempt = tonumber(v[9]), max_attempts = tonumber(v[10]),
           cancel_requested = v[11] == '1', last_finish = v[12], tenant = v[13] or nil,
           counted = counted_mark(v[14]) }
end

-- Whether `token` holds the lease of job `lease` (from job_lease): `transition::holds`. An
-- expired lease still holds until a rescue ends it.
local function holds(lease, token)
  return lease ~= nil and lease.state == 'running' and lease.token == token
end

-- Available again at `run_at` with the attempt returned (`transition::give_back`: snooze,
-- release). `lease` is the running job's job_lease.
local function give_back(id, lease, run_at, extra)
  local fields = extra or {}
  if lease.attempt > 0 then
    fields[#fields + 1] = 'attempt'
    fields[#fields + 1] = I(lease.attempt - 1)
  end
  make_available(id, lease, 'running', run_at, fields)
end

-- The fresh DLQ entry ids a call passes from ARGV[first] on: a function answering the next one
-- at each call, nil once they are used up (the caller then stops and says so).
local function dlq_ids(first)
  local next_id = first
  return function()
    if next_id > #ARGV then return nil end
    next_id = next_id + 1
    return ARGV[next_id - 1]
  end
end

-- Reclaim a running job whose lease ended without a finish (`transition::reclaim`, shared by
-- `transition::rescue` and `transition::rescue_from_lost_worker`): the failure (`kind`,
-- `message`) is recorded and the attempt stays spent; the job is cancelled when a cancel was
-- requested (no DLQ entry, even on its last attempt), available now while attempts are left,
-- and dead otherwise, with a DLQ entry under the id `next_dlq()` answers. `lease` is the job's
-- job_lease. Answers {1, id} (available again), {2, id, dlq id} (promoted) or {3, id}
-- (cancelled); nil, before any write, when the job would die and no DLQ id is left.
local function reclaim(id, lease, kind, message, next_dlq)
  local dlq_id
  if not lease.cancel_requested and lease.attempt >= lease.max_attempts then
    dlq_id = next_dlq()
    if not dlq_id then return nil end
  end
  record_error(id, lease.attempt, kind, message)
  if lease.cancel_requested then
    end_job(id, lease, 'running', 'cancelled')
    return { 3, id }
  elseif lease.attempt < lease.max_attempts then
    -- Its old place in the queue (`transition::rescue`: run-at kept, at most now).
    make_available(id, lease, 'running', math.min(lease.run_at, NOW))
    return { 1, id }
  end
  promote(id, lease, 'running', dlq_id)
  return { 2, id, dlq_id }
end

-- Heartbeat a batch of leases (`transition::renew`): the job id and lease token pairs in ARGV
-- from ARGV[first] on, renewed by `ttl` µs. A lease renews while its token holds the job
-- (running under it; an expired lease not yet rescued still holds): its expiry becomes
-- NOW + ttl. Answers one code per lease: 0 lost, 1 renewed, 2 renewed with a cancel request.
local function renew_leases(ttl, first)
  local expires = NOW + ttl
  if expires > MAX_TIME then expires = MAX_TIME end
  local expires_s = I(expires)
  local out = {}
  for i = first, #ARGV - 1, 2 do
    local id, token = ARGV[i], ARGV[i + 1]
    local v = redis.call('HMGET', job_key(id), 'state', 'lease_token', 'cancel_requested')
    if v[1] == 'running' and v[2] == token then
      redis.call('HSET', job_key(id), 'lease_expires', expires_s)
      redis.call('ZADD', K_LEASES, expires, id)
      out[#out + 1] = v[3] == '1' and 2 or 1
    else
      out[#out + 1] = 0
    end
  end
  return out
end
