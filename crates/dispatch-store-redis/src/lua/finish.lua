-- Finish a batch (`transition::finish` and `apply`). ARGV[2] = item count, then 8 arguments
-- per item: job id, lease token, outcome (complete|retry|fail|snooze|cancel|release), failure
-- kind and message ('' unless retry or fail), run-at kind (now|at|after) and value (µs; retry
-- and snooze), and a fresh DLQ entry id for an item that may die (retry, fail; '' otherwise).
-- Items apply in order, as one finish after another. Answers per item {1, state, dlq id or ''}
-- (applied), {2} (already applied: a repeat of the last finish) or {3} (lease lost).
local STRIDE = 8
local n = tonumber(ARGV[2])

local function arg(i, field) return ARGV[3 + i * STRIDE + field] end

-- Apply outcome `i` to running job `id` (`lease` from job_lease), whose lease it holds
-- (`transition::apply`): a cancel request wins over running again. Answers the new state and
-- the DLQ entry id when the job died.
local function apply(i, id, lease)
  local outcome = arg(i, 2)
  -- `last_finish` remembers the applied token (written with the transition), so a retried
  -- call answers AlreadyApplied.
  local mark = { 'last_finish', arg(i, 1) }
  if outcome == 'retry' or outcome == 'fail' then
    record_error(id, lease.attempt, arg(i, 3), arg(i, 4))
  end
  if outcome == 'complete' then
    end_job(id, lease, 'running', 'completed', mark)
    return 'completed'
  elseif outcome == 'cancel' or (lease.cancel_requested and
      (outcome == 'retry' or outcome == 'snooze' or outcome == 'release')) then
    end_job(id, lease, 'running', 'cancelled', mark)
    return 'cancelled'
  elseif outcome == 'fail' or (outcome == 'retry' and lease.attempt >= lease.max_attempts) then
    promote(id, lease, 'running', arg(i, 7), mark)
    return 'dead', arg(i, 7)
  elseif outcome == 'retry' then
    make_available(id, lease, 'running', resolve_run_at(arg(i, 5), arg(i, 6)), mark)
    return 'available'
  elseif outcome == 'snooze' then
    give_back(id, lease, resolve_run_at(arg(i, 5), arg(i, 6)), mark)
    return 'available'
  else -- release
    give_back(id, lease, NOW, mark)
    return 'available'
  end
end

-- The running job `id` as `apply` needs it for `outcome`: every field read costs the script a
-- string, so a completion (the common finish) reads four, and only the outcomes that need the
-- attempts or the job's place read those.
local function lease_for(id, outcome, v)
  local lease = { state = v[1], token = v[2], queue = v[3], cancel_requested = v[4] == '1',
                  counted = counted_mark(v[5]) }
  if outcome ~= 'complete' and outcome ~= 'cancel' then
    local more = redis.call('HMGET', job_key(id), 'attempt', 'max_attempts', 'name', 'priority',
      'run_at', 'seq', 'tenant')
    lease.attempt, lease.max_attempts = tonumber(more[1]), tonumber(more[2])
    lease.name, lease.priority = more[3], tonumber(more[4])
    lease.run_at, lease.seq = tonumber(more[5]), tonumber(more[6])
    lease.tenant = more[7] or nil
  end
  return lease
end

local out = {}
for i = 0, n - 1 do
  local id, token = arg(i, 0), arg(i, 1)
  local v = redis.call('HMGET', job_key(id), 'state', 'lease_token', 'queue', 'cancel_requested',
    'counted')
  if v[1] == 'running' and v[2] == token then
    local state, dlq_id = apply(i, id, lease_for(id, arg(i, 2), v))
    out[#out + 1] = { 1, state, dlq_id or '' }
  elseif v[1] and redis.call('HGET', job_key(id), 'last_finish') == token then
    out[#out + 1] = { 2 }
  else
    out[#out + 1] = { 3 }
  end
end
flush()
return out
