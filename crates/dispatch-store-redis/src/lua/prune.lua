-- One pass of retention over one kind of record (`RetentionStore::prune`, as
-- dispatch-store-memory's retention: the rules of `dispatch_core::retention`). ARGV[2] = the
-- leadership, ARGV[3] = the term, ARGV[4] = its holder, ARGV[5] = how many leader writes to
-- keep (LEADER_WRITES_KEPT), ARGV[6] = '1' to record the call as a leader write (the first pass
-- of a prune), ARGV[7] = the kind (runs|jobs|dlq|events|workers), ARGV[8] = the most records
-- of the kind to remove, then the kind's ages in µs ('' keeps for ever): runs, dlq and workers
-- one; jobs three (completed, cancelled, dead); events none (each has its own keep-until).
-- Fenced as the sweep is: unless the term holds at NOW (`cluster::holds`) the script refuses
-- NOT_LEADER before any write.
-- Each pass reads its kind's retention index by score (finish, death, expiry or last-seen
-- time) up to its cutoff, so it costs O(limit) whatever else the store holds, and never scans
-- the keyspace. A record met that must be kept is set aside out of the index (a drive job of a
-- stored run, a job inside its unique window, a run whose parent is live) so no later pass
-- reads it again; only a run whose drive job is about to finish is left in place.
-- Answers { jobs, dlq, runs, checkpoints, events, workers, more (0|1) }.
local name, term, holder = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local kept_writes, record, kind = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
local limit = tonumber(ARGV[8])
if not leader_holds(read_leader(name), term, holder) then
  return refuse('NOT_LEADER', 'term ' .. ARGV[3] .. ' of leadership ' .. cjson.encode(name) ..
    ' is no longer valid')
end
if record then record_leader_write(name, term, 'prune', kept_writes) end

local report = { jobs = 0, dlq = 0, runs = 0, checkpoints = 0, events = 0, workers = 0 }
local more = false

-- The cutoff of an age argument: NOW less the age, or nil for '' (kept for ever).
local function cutoff(arg)
  if arg == nil or arg == '' then return nil end
  return NOW - tonumber(arg)
end

-- Delete job `id` with every key and index entry it owns; `v` is its
-- { state, queue, name, unique_key } (nil: read here). Whether it was there.
local function delete_job(id, v)
  v = v or redis.call('HMGET', job_key(id), 'state', 'queue', 'name', 'unique_key')
  if not v[1] then return false end
  if v[4] then
    -- The key goes only while it still names this job (a later job may hold it now).
    local uk = unique_key(v[3], v[4])
    if redis.call('GET', uk) == id then redis.call('DEL', uk) end
  end
  redis.call('DEL', job_key(id))
  zrem(K_JOBS, id)
  drop_state(id, v[2], v[1])
  return true
end

-- Runs ----------------------------------------------------------------------------------------
-- Delete ended run `id` (`v` = { state, parent, drive_job, name, idempotency_key }) with its
-- checkpoints, waits, parked children list, idempotency key and drive job.
local function delete_run(id, v)
  report.checkpoints = report.checkpoints + redis.call('ZCARD', ckpt_order_key(id))
  remove_waits(id)
  redis.call('DEL', run_key(id), ckpt_key(id), ckpt_order_key(id), run_parked_key(id))
  zrem(K_RUNS, id)
  zrem(run_state_key(v[1]), id)
  zrem(K_RUNS_ENDED, id)
  if v[5] then
    local ikey = idem_key(v[4], v[5])
    if redis.call('GET', ikey) == id then redis.call('DEL', ikey) end
  end
  if v[3] and delete_job(v[3], nil) then report.jobs = report.jobs + 1 end
  report.runs = report.runs + 1
end

-- Ended runs old enough (`retention::run_prunable`). A run whose parent is live is parked
-- under the parent (unpark_children puts it back when the parent ends); one whose drive job
-- is available or running stays in the index (its drive is finishing), so up to twice the
-- limit is read.
local function prune_runs(at)
  local ids = redis.call('ZRANGEBYSCORE', K_RUNS_ENDED, '-inf', I(at), 'LIMIT', 0, 2 * limit)
  for _, id in ipairs(ids) do
    if report.runs >= limit then break end
    local v = redis.call('HMGET', run_key(id), 'state', 'parent', 'drive_job', 'name',
      'idempotency_key')
    local parent = v[2] and redis.call('HGET', run_key(v[2]), 'state')
    local drive = v[3] and redis.call('HGET', job_key(v[3]), 'state')
    if not v[1] or not is_final_run(v[1]) then
      zrem(K_RUNS_ENDED, id)
    elseif parent == 'running' or parent == 'suspended' then
      zrem(K_RUNS_ENDED, id)
      redis.call('SADD', run_parked_key(v[2]), id)
    elseif drive ~= 'available' and drive ~= 'running' then
      delete_run(id, v)
    end
  end
  more = report.runs >= limit or #ids == 2 * limit
end

-- Jobs ----------------------------------------------------------------------------------------
local FINAL = { 'completed', 'cancelled', 'dead' }

-- Jobs set aside for their unique window whose window has passed go back to their state's
-- finished_key set, at most `limit`.
local function unpark_unique()
  local ids = redis.call('ZRANGEBYSCORE', K_UNIQUE_HELD, '-inf', NOW_S, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', job_key(id), 'state', 'finished_at')
    if v[1] and is_final_job(v[1]) and v[2] then
      redis.call('ZADD', finished_key(v[1]), v[2], id)
    end
  end
  if #ids > 0 then variadic('ZREM', K_UNIQUE_HELD, ids) end
  return #ids == limit
end

-- Up to `limit` finished jobs of each final state old enough by `cutoffs` (one per state, nil
-- kept), oldest finish first across the states: { id, at, state } each; whether a state had
-- more.
local function job_candidates(cutoffs)
  local out, full = {}, false
  for i, state in ipairs(FINAL) do
    if cutoffs[i] then
      local r = redis.call('ZRANGEBYSCORE', finished_key(state), '-inf', I(cutoffs[i]),
        'WITHSCORES', 'LIMIT', 0, limit)
      for j = 1, #r, 2 do
        out[#out + 1] = { id = r[j], at = tonumber(r[j + 1]), state = state }
      end
      if #r == 2 * limit then full = true end
    end
  end
  table.sort(out, function(a, b)
    if a.at ~= b.at then return a.at < b.at end
    return a.id < b.id
  end)
  return out, full
end

-- Finished jobs old enough (`retention::job_prunable`): the drive job of a stored run is set
-- aside (it goes with its run), one inside its unique window waits in K_UNIQUE_HELD.
local function prune_jobs(cutoffs)
  local unparked_all = unpark_unique()
  local candidates, full = job_candidates(cutoffs)
  for _, c in ipairs(candidates) do
    if report.jobs >= limit then break end
    local id = c.id
    local v = redis.call('HMGET', job_key(id), 'state', 'queue', 'name', 'unique_key',
      'unique_until', 'run')
    if v[1] ~= c.state then
      -- Not in this state any more (the index is kept exact; this is only a guard).
      redis.call('ZREM', finished_key(c.state), id)
    elseif v[6] and redis.call('EXISTS', run_key(v[6])) == 1 then
      redis.call('ZREM', finished_key(c.state), id)
    elseif v[5] and tonumber(v[5]) > NOW then
      redis.call('ZREM', finished_key(c.state), id)
      redis.call('ZADD', K_UNIQUE_HELD, v[5], id)
    else
      delete_job(id, v)
      report.jobs = report.jobs + 1
    end
  end
  more = report.jobs >= limit or full or unparked_all
end

-- DLQ entries, kept events, gone workers ------------------------------------------------------
-- DLQ entries that died at or before `at`, oldest death first.
local function prune_dlq(at)
  local ids = redis.call('ZRANGEBYSCORE', K_DLQ_FAILED, '-inf', I(at), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('DEL', dlq_key(id))
    zrem(K_DLQ, id)
    zrem(K_DLQ_FAILED, id)
  end
  report.dlq = #ids
  more = #ids == limit
end

-- Kept events whose keep-until has come (the memory store's `keep_until <= now`).
local function prune_events()
  local members = redis.call('ZRANGEBYSCORE', K_KEPT_EXPIRY, '-inf', NOW_S, 'LIMIT', 0, limit)
  for _, member in ipairs(members) do
    local seq, part = string.match(member, '^(%d+):(.*)$')
    if seq then
      redis.call('ZREM', kept_key(part), seq)
      redis.call('HDEL', kept_data_key(part), 'p:' .. seq, 'e:' .. seq)
    end
    zrem(K_KEPT_EXPIRY, member)
  end
  report.events = #members
  more = #members == limit
end

-- Gone workers last seen at or before `at`. An entry whose worker is no longer gone goes; one
-- whose last_seen moved is scored again.
local function prune_workers(at)
  local ids = redis.call('ZRANGEBYSCORE', K_WORKERS_GONE_SEEN, '-inf', I(at), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', worker_key(id), 'state', 'last_seen')
    if v[1] ~= 'gone' then
      zrem(K_WORKERS_GONE_SEEN, id)
    elseif v[2] and tonumber(v[2]) > at then
      redis.call('ZADD', K_WORKERS_GONE_SEEN, v[2], id)
    else
      redis.call('DEL', worker_key(id))
      zrem(K_WORKERS, id)
      zrem(K_WORKERS_SEEN, id)
      zrem(K_WORKERS_GONE_SEEN, id)
      redis.call('SREM', K_WORKERS_GONE, id)
      report.workers = report.workers + 1
    end
  end
  more = #ids == limit
end

if limit > 0 then
  if kind == 'runs' then
    local at = cutoff(ARGV[9])
    if at then prune_runs(at) end
  elseif kind == 'jobs' then
    prune_jobs({ cutoff(ARGV[9]), cutoff(ARGV[10]), cutoff(ARGV[11]) })
  elseif kind == 'dlq' then
    local at = cutoff(ARGV[9])
    if at then prune_dlq(at) end
  elseif kind == 'events' then
    prune_events()
  elseif kind == 'workers' then
    local at = cutoff(ARGV[9])
    if at then prune_workers(at) end
  end
end
flush()
return { report.jobs, report.dlq, report.runs, report.checkpoints, report.events,
  report.workers, more and 1 or 0 }
