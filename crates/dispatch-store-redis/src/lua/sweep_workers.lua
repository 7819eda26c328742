-- The leader's sweep of the worker registry (`MembershipStore::sweep_workers`). ARGV[2] = the
-- leadership, ARGV[3] = the term, ARGV[4] = its holder, ARGV[5] = the heartbeat timeout (µs),
-- ARGV[6] = the most jobs to reclaim, ARGV[7] = how many leader writes to keep
-- (LEADER_WRITES_KEPT), then fresh DLQ entry ids for reclaimed jobs that die.
-- Fenced: unless the term holds at NOW (`cluster::holds`) the script refuses NOT_LEADER before
-- any write. Then, in this order: the sweep is recorded as a leader write; every active or
-- draining worker last seen more than the timeout ago (`cluster::is_overdue`) becomes gone;
-- up to the limit of running jobs whose lease owner is a gone worker (newly gone or gone
-- before) are reclaimed, oldest lease expiry first (`transition::rescue_from_lost_worker`:
-- reclaim in jobs.lua with a worker_lost error). When the DLQ ids run out the script stops
-- before the next dying job and answers a last {0}: the next sweep goes on from there.
-- Answers { the IDs of the workers this sweep marked gone, by ID, { per job {1, id}
-- (available again), {2, id, dlq id} (promoted) or {3, id} (cancelled) } }.
local name, term, holder = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local timeout, limit, kept = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if not leader_holds(read_leader(name), term, holder) then
  return refuse('NOT_LEADER', 'term ' .. ARGV[3] .. ' of leadership ' .. cjson.encode(name) ..
    ' is no longer valid')
end
record_leader_write(name, term, 'sweep', kept)

-- Mark the overdue workers gone: last_seen + timeout < NOW, i.e. last_seen < NOW - timeout.
-- Their score is their last_seen, which also scores them in K_WORKERS_GONE_SEEN (retention).
local gone = {}
local overdue = redis.call('ZRANGEBYSCORE', K_WORKERS_SEEN, '-inf', '(' .. I(NOW - timeout),
  'WITHSCORES')
for i = 1, #overdue, 2 do
  local id = overdue[i]
  local state = worker_state(id)
  if state == 'active' or state == 'draining' then
    redis.call('HSET', worker_key(id), 'state', 'gone')
    redis.call('SADD', K_WORKERS_GONE, id)
    redis.call('ZADD', K_WORKERS_GONE_SEEN, overdue[i + 1], id)
    gone[#gone + 1] = id
  end
  -- Only active and draining workers are watched (a stale entry goes too).
  redis.call('ZREM', K_WORKERS_SEEN, id)
end
-- Worker IDs sort as the workers do (TypeID base32 keeps the order).
table.sort(gone)

-- Whether lease owner `owner` is a gone worker, asked once per owner.
local owners = {}
local function is_gone(owner)
  if owners[owner] == nil then
    owners[owner] = redis.call('SISMEMBER', K_WORKERS_GONE, owner) == 1
  end
  return owners[owner]
end

-- Reclaim the running jobs of gone workers. Running jobs are K_LEASES (by lease expiry), and
-- no index per worker is kept: that would cost every claim and finish a write per job, for
-- the rare sweep that finds a gone worker. So the sweep walks K_LEASES by rank, a chunk at a
-- time, reading each job's lease owner: bounded by the number of running jobs, which the
-- workers' slots bound. Ranks stay put during the walk: the reclaims' K_LEASES removals are
-- written by flush() at the end.
local CHUNK = 1000
local out = {}
local next_dlq = dlq_ids(8)
local reclaimed, start, stopped = 0, 0, false
if limit > 0 and redis.call('SCARD', K_WORKERS_GONE) > 0 then
  while reclaimed < limit and not stopped do
    local ids = redis.call('ZRANGE', K_LEASES, start, start + CHUNK - 1)
    if #ids == 0 then break end
    start = start + #ids
    for _, id in ipairs(ids) do
      local v = redis.call('HMGET', job_key(id), 'state', 'lease_owner')
      if v[1] == 'running' and v[2] and is_gone(v[2]) then
        -- `transition::lost_worker_message`, the owner as lease_owner spells it (wkr_…).
        local message = 'worker ' .. v[2] .. ' stopped heartbeating and was marked gone'
        local item = reclaim(id, job_lease(id), 'worker_lost', message, next_dlq)
        if not item then
          out[#out + 1] = { 0 }
          stopped = true
          break
        end
        out[#out + 1] = item
        reclaimed = reclaimed + 1
        if reclaimed >= limit then break end
      end
    end
  end
end
flush()
return { gone, out }
