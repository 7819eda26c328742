-- The prelude every script of the Redis store starts with: the key layout, time, and the job
-- index bookkeeping that every transition shares. `script.rs` joins it with each script's body.
--
-- Calling convention: KEYS[1] is the store's prefix, hash tag included ("{dispatch}"); every
-- key a script touches starts with it, so all of them live in one cluster slot. ARGV[1] is the
-- caller's clock in microseconds since the epoch, or '' to read the server's (TIME). The
-- script's own arguments start at ARGV[2].
--
-- Rules every script keeps:
-- * Check first, write after. Redis does not roll a script back: an error reply after a write
--   leaves the write. A script that can refuse (conflict, not found, lease lost) decides that
--   before its first write, and raises only `redis.error_reply('DISPATCH_<KIND> message')`.
-- * Numbers written or compared as keys go through I(n): Lua 5.1 prints 1.7e15 as "1.7e+15".
-- * State changes go through move_state / add_state / the job helpers below, and every script
--   that used them calls flush() before it returns, so indexes and counts stay exact.

local P = KEYS[1]
local NOW
if ARGV[1] ~= '' then
  NOW = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- An integer as Redis and Rust read it.
local function I(n)
  return string.format('%d', n)
end

-- NOW as I() writes it, formatted once per call.
local NOW_S = I(NOW)

-- Refuse the call (before any write). `kind` is CONFLICT, NOT_FOUND, LEASE_LOST, NOT_LEADER or
-- INVALID.
local function refuse(kind, message)
  return redis.error_reply('DISPATCH_' .. kind .. ' ' .. message)
end

-- Key layout ----------------------------------------------------------------------------------
-- IDs are the UUID's 32 lowercase hex digits, so lexical order is creation order (UUIDv7).
local function job_key(id) return P .. ':job:' .. id end
-- (queue, name) pairs: the queue length first, so no queue or name can forge another pair.
local function pair(queue, name) return string.len(queue) .. ':' .. queue .. ':' .. name end
-- Due available jobs of one pair: score -priority, member "<run_at:17><seq:16><id>", so rank
-- order is priority desc, then run-at, then enqueue order.
local function ready_key(queue, name) return P .. ':ready:' .. pair(queue, name) end
-- Not yet due available jobs of one pair: score run-at, member id.
local function sched_key(queue, name) return P .. ':sched:' .. pair(queue, name) end
-- Running jobs: score lease expiry, member id.
local K_LEASES = P .. ':leases'
-- Every job (score 0, lexical by id), and per state (but running: see K_LEASES).
local K_JOBS = P .. ':jobs'
local function state_key(state) return P .. ':state:' .. state end
-- Finished jobs awaiting retention, per final state (completed, cancelled, dead): score
-- finished_at, member id, so a prune reads only what is old enough. A job leaves it when it is
-- pruned, when it leaves its state (a re-armed drive job), or when retention sets it aside: the
-- drive job of a stored run goes with its run instead, and a job inside its unique key's
-- window waits in K_UNIQUE_HELD until the window has passed.
local function finished_key(state) return P .. ':finished:' .. state end
-- Finished jobs set aside by retention while they hold their unique key's window: score
-- unique_until, member id.
local K_UNIQUE_HELD = P .. ':uniqueheld'
-- Counts per (state, queue): field "<state>:<queue>".
local K_COUNTS = P .. ':counts'
-- Enqueue order.
local K_SEQ = P .. ':seq'
-- The job that last took a unique key of a job name.
local function unique_key(name, key) return P .. ':unique:' .. string.len(name) .. ':' .. name .. ':' .. key end
-- Wake-up channel: one message per script call that made jobs available.
local K_WAKE = P .. ':wake'
-- DLQ entries and their index (score 0, lexical by id).
local function dlq_key(id) return P .. ':dlq:' .. id end
local K_DLQ = P .. ':dlqs'
-- DLQ entries by death (score failed_at, member id), for retention.
local K_DLQ_FAILED = P .. ':dlqs:failed'
-- Workflow runs and their indexes (score 0, lexical by id; all, and per state).
local function run_key(id) return P .. ':run:' .. id end
local K_RUNS = P .. ':runs'
local function run_state_key(state) return P .. ':runstate:' .. state end
-- The worker registry (`lua/cluster.lua`). Worker IDs are spelled as a job's `lease_owner` is
-- (`wkr_…`, TypeID base32, whose lexical order is creation order). A worker is a hash: its
-- registration (id, host, pid, queues as a JSON array, concurrency, version), state
-- (active|draining|gone), started_at, last_seen.
local function worker_key(id) return P .. ':worker:' .. id end
-- Every registered worker (score 0, lexical by ID), for listing.
local K_WORKERS = P .. ':workers'
-- Active and draining workers scored by last_seen: the sweep finds the overdue ones by score,
-- never by a scan. A worker leaves it when it is marked gone or deregistered.
local K_WORKERS_SEEN = P .. ':workers:seen'
-- The IDs of gone workers, whose running jobs the sweep reclaims.
local K_WORKERS_GONE = P .. ':workers:gone'
-- Gone workers scored by last_seen, for retention; a worker leaves it when it registers again,
-- deregisters or is pruned.
local K_WORKERS_GONE_SEEN = P .. ':workers:goneseen'
-- Flow control (`lua/flow.lua` keeps them): queue configs, a hash of queue -> the
-- `QueueConfig` as JSON (serde's form, written by flow.rs or by flow.lua's default_config).
local K_FLOW_CONFIG = P .. ':flowconfig'
-- A gate (`dispatch_core::flow::queue_gate` & co. name it): a hash of `running` (counted jobs
-- running through it; absent at zero) and `tat` (the rate's arrival time, µs).
local function gate_key(gate) return P .. ':gate:' .. gate end
-- Tenant lanes: the due available jobs of one (queue, name, tenant), scored and spelled as in
-- the pair's ready set (the ready set still holds them too). Jobs without a tenant have none.
local function lane_key(queue, name, tenant)
  return P .. ':lane:' .. string.len(queue) .. ':' .. queue .. ':' .. string.len(name) .. ':' ..
    name .. ':' .. tenant
end
-- The tenants of one pair whose lane holds jobs (a set, kept exact by flush()).
local function lanes_key(queue, name) return P .. ':lanes:' .. pair(queue, name) end
-- A leadership: hash of holder, term, elected_at, expires_at.
local function leader_key(name) return P .. ':leader:' .. name end
-- The writes accepted under a leadership's terms: a list, oldest first, each a JSON object
-- {"term","at","action"}, trimmed to the newest LEADER_WRITES_KEPT.
local function leader_writes_key(name) return P .. ':leaderwrites:' .. name end

-- Index bookkeeping ---------------------------------------------------------------------------
-- Sorted-set writes of the hot paths (ready, sched, lease, state and all-jobs indexes) are
-- gathered per script and written by flush(): one variadic ZREM and one ZADD per key, however
-- many jobs the call moved, which saves a command per job and index. Per key, the last write
-- of a member wins, so a job placed and taken out again in one call ends where it should. A
-- script that reads a set it wrote through zadd/zrem calls zflush() first (claim does, after
-- promoting due jobs).
local zpending = {}      -- key -> { member -> score, or false to remove }
local pending_count = {} -- "<state>:<queue>" -> delta
local lanes_touched = {} -- lane key -> { set, tenant, added, removed }: lanes to sync
local woken = {}         -- queue -> true: queues that got available jobs
local woken_any = false

local function zwrite(key, member, score)
  local members = zpending[key]
  if members == nil then members = {}; zpending[key] = members end
  members[member] = score
end

-- Add (or take out, `removed`) a job of tenant lane (queue, name, tenant), at flush; flush()
-- then adds the tenant to the pair's set of lanes, or takes it out once its lane is empty.
local function lane_write(queue, name, tenant, member, score)
  local key = lane_key(queue, name, tenant)
  zwrite(key, member, score)
  local t = lanes_touched[key]
  if t == nil then
    t = { set = lanes_key(queue, name), tenant = tenant, added = false, removed = false }
    lanes_touched[key] = t
  end
  if score then t.added = true else t.removed = true end
end

-- Add (or move) `member` of sorted set `key` at `score`, at flush.
local function zadd(key, score, member) zwrite(key, member, score) end

-- Remove `member` from sorted set `key`, at flush.
local function zrem(key, member) zwrite(key, member, false) end

local function count(state, queue, delta)
  local field = state .. ':' .. queue
  pending_count[field] = (pending_count[field] or 0) + delta
end

-- Running jobs have no state index of their own: K_LEASES holds exactly them (listings of
-- running jobs read it), which spares a claim and a finish a sorted-set write each.
local function indexed(state) return state ~= 'running' end

local function is_final_job(state)
  return state == 'completed' or state == 'cancelled' or state == 'dead'
end

-- A new job enters `state`.
local function add_state(id, queue, state)
  if indexed(state) then zadd(state_key(state), 0, id) end
  count(state, queue, 1)
end

-- A job moves from one state to another.
local function move_state(id, queue, from, to)
  if from == to then return end
  if indexed(from) then zrem(state_key(from), id) end
  if indexed(to) then zadd(state_key(to), 0, id) end
  -- Leaving a final state is rare (a re-armed drive job); entering one costs the finish a
  -- member in its finished_key set (one ZADD per state and call, at flush).
  if is_final_job(from) then
    zrem(finished_key(from), id)
    zrem(K_UNIQUE_HELD, id)
  end
  if is_final_job(to) then zadd(finished_key(to), NOW, id) end
  count(from, queue, -1)
  count(to, queue, 1)
end

-- A job leaves the store (retention, deletes).
local function drop_state(id, queue, state)
  if indexed(state) then zrem(state_key(state), id) end
  if is_final_job(state) then
    zrem(finished_key(state), id)
    zrem(K_UNIQUE_HELD, id)
  end
  count(state, queue, -1)
end

local function wake(queue)
  woken[queue] = true
end

-- `cmd key args...` in chunks (unpack has a stack limit); `width` arguments per item, so a
-- chunk never splits a score from its member.
local function variadic(cmd, key, args, width)
  local size = 4000 - 4000 % (width or 1)
  local i = 1
  while i <= #args do
    local last = math.min(i + size - 1, #args)
    redis.call(cmd, key, unpack(args, i, last))
    i = last + 1
  end
end

-- Walk lexical index `key` (score 0, members in ID order) after `cursor` ('' for the start),
-- at most `budget` members, calling `visit(member)` on each until it answers true (done).
-- Answers where a next call resumes: the last member walked when the budget ran out first, ''
-- when `visit` was done or the index ended. A call so costs O(budget), however sparse what
-- `visit` looks for; listings and bulk calls page on with the cursor.
local function walk_lex(key, cursor, budget, visit)
  local CHUNK = 500
  local from = cursor == '' and '-' or '(' .. cursor
  local walked, last = 0, nil
  while walked < budget do
    local take = math.min(CHUNK, budget - walked)
    local ids = redis.call('ZRANGEBYLEX', key, from, '+', 'LIMIT', 0, take)
    for _, id in ipairs(ids) do
      walked = walked + 1
      last = id
      if visit(id) then return '' end
    end
    if #ids < take then return '' end
    from = '(' .. last
  end
  return last or ''
end

-- Write the gathered sorted-set changes.
local function zflush()
  for key, members in pairs(zpending) do
    local adds, rems = {}, {}
    for member, score in pairs(members) do
      if score then
        adds[#adds + 1] = score
        adds[#adds + 1] = member
      else
        rems[#rems + 1] = member
      end
    end
    if #rems > 0 then variadic('ZREM', key, rems) end
    if #adds > 0 then variadic('ZADD', key, adds, 2) end
  end
  zpending = {}
end

-- Write the gathered index changes and publish one wake-up.
local function flush()
  zflush()
  -- A lane that holds jobs has its tenant in the set already, unless this call added its
  -- first: a lane only added to is added to the set, one taken from is checked.
  for key, t in pairs(lanes_touched) do
    if not t.removed then
      redis.call('SADD', t.set, t.tenant)
    elseif redis.call('EXISTS', key) == 0 then
      redis.call('SREM', t.set, t.tenant)
    elseif t.added then
      redis.call('SADD', t.set, t.tenant)
    end
  end
  lanes_touched = {}
  for field, delta in pairs(pending_count) do
    if delta ~= 0 then
      local n = redis.call('HINCRBY', K_COUNTS, field, delta)
      if n <= 0 then redis.call('HDEL', K_COUNTS, field) end
    end
  end
  pending_count = {}
  local queues = {}
  for q in pairs(woken) do queues[#queues + 1] = q end
  if #queues == 1 then
    redis.call('PUBLISH', K_WAKE, queues[1])
  elseif #queues > 1 or woken_any then
    redis.call('PUBLISH', K_WAKE, '')
  end
  woken, woken_any = {}, false
end
