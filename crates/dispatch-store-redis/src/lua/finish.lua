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
  if outcome == 'retry' or outcome == 'fail' then
    record_error(id, lease.attempt, arg(i, 3), arg(i, 4))
  end
  if outcome == 'complete' then
    end_job(id, lease, 'running', 'completed')
    return 'completed'
  elseif outcome == 'cancel' or (lease.cancel_requested and
      (outcome == 'retry' or outcome == 'snooze' or outcome == 'release')) then
    end_job(id, lease, 'running', 'cancelled')
    return 'cancelled'
  elseif outcome == 'fail' or (outcome == 'retry' and lease.attempt >= lease.max_attempts) then
    promote(id, lease, 'running', arg(i, 7))
    return 'dead', arg(i, 7)
  elseif outcome == 'retry' then
    make_available(id, lease, 'running', resolve_run_at(arg(i, 5), arg(i, 6)))
    return 'available'
  elseif outcome == 'snooze' then
    give_back(id, lease, resolve_run_at(arg(i, 5), arg(i, 6)))
    return 'available'
  else -- release
    give_back(id, lease, NOW)
    return 'available'
  end
end

local out = {}
for i = 0, n - 1 do
  local id, token = arg(i, 0), arg(i, 1)
  local lease = job_lease(id)
  if holds(lease, token) then
    -- `last_finish` remembers the applied token, so a retried call answers AlreadyApplied.
    redis.call('HSET', job_key(id), 'last_finish', token)
    local state, dlq_id = apply(i, id, lease)
    out[#out + 1] = { 1, state, dlq_id or '' }
  elseif lease and lease.last_finish == token then
    out[#out + 1] = { 2 }
  else
    out[#out + 1] = { 3 }
  end
end
flush()
return out
