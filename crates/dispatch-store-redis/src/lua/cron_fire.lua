-- Apply cron fires under the leader's term (`CronStore::fire_cron`), all in this one call.
-- ARGV[2] = the leadership, ARGV[3] = the term, ARGV[4] = its holder, ARGV[5] = how many
-- leader writes to keep (LEADER_WRITES_KEPT), ARGV[6] = how many fires; then per fire: the
-- entry id, the expected next fire (µs), the next fire (µs, '' none), the fired time (µs, ''
-- none), skip if running ('1'|'0'), how many jobs, and each job's 15 arguments
-- (`enqueue_jobs.lua`).
-- Fenced as prune is: unless the term holds at NOW (`cluster::holds`) the script refuses
-- NOT_LEADER, and on a job ID reused or repeated CONFLICT, before any write; an accepted call
-- is recorded once as a leader write (`cron`). Each fire applies only while its entry is
-- enabled with next fire still the expected one. Wakes the queues of the jobs it enqueued
-- with one message.
-- Answers per fire, in order: {1, {{1, id} | {2, holder id}, ...}} fired (as enqueue answers
-- each job), {2, previous job id} overlapped, or {3} stale.
local name, term, holder = ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not leader_holds(read_leader(name), term, holder) then
  return refuse('NOT_LEADER', 'term ' .. ARGV[3] .. ' of leadership ' .. cjson.encode(name) ..
    ' is no longer valid')
end

-- Read the fires; every job of the call is checked before the first write.
local fires, bases = {}, {}
local at = 7
for i = 1, tonumber(ARGV[6]) do
  local fire = { id = ARGV[at], expected = tonumber(ARGV[at + 1]), next_fire = ARGV[at + 2],
    fired = ARGV[at + 3], skip = ARGV[at + 4] == '1', jobs = {} }
  local jobs = tonumber(ARGV[at + 5])
  at = at + 6
  for _ = 1, jobs do
    fire.jobs[#fire.jobs + 1] = at
    bases[#bases + 1] = at
    at = at + JOB_STRIDE
  end
  fires[i] = fire
end
local refused, retried = check_jobs(bases)
if refused then return refused end
record_leader_write(name, term, 'cron', tonumber(ARGV[5]))

-- Whether job `id` (nil: none) is available or running.
local function unfinished(id)
  if not id then return false end
  local state = redis.call('HGET', job_key(id), 'state')
  return state == 'available' or state == 'running'
end

-- Apply one fire; its answer.
local function apply(fire)
  local key = cron_key(fire.id)
  local v = redis.call('HMGET', key, 'enabled', 'next_fire', 'last_job')
  if v[1] ~= '1' or not v[2] or tonumber(v[2]) ~= fire.expected then return { 3 } end
  local outcome
  if fire.skip and unfinished(v[3]) then
    outcome = { 2, v[3] }
  else
    local enqueued = {}
    for _, base in ipairs(fire.jobs) do enqueued[#enqueued + 1] = enqueue_job(base, retried) end
    if #enqueued > 0 then
      -- The last job of the fire, created here or the one holding its time's unique key.
      redis.call('HSET', key, 'last_job', enqueued[#enqueued][2])
      set_time(key, 'last_fired', fire.fired)
    end
    outcome = { 1, enqueued }
  end
  set_time(key, 'next_fire', fire.next_fire)
  cron_place(fire.id, '1', fire.next_fire)
  return outcome
end

local out = {}
for i, fire in ipairs(fires) do out[i] = apply(fire) end
flush()
return out
