-- Enqueue helpers of the scripts that store batches of new jobs (`enqueue.lua`,
-- `cron_fire.lua`; `script.rs` adds this file to those only). A job is 15 arguments, as
-- `enqueue.rs`'s `job_args` writes them, at ARGV[base] .. ARGV[base + 14]: id, name, queue,
-- payload, priority, run-at kind (now|at|after), run-at value (µs), max attempts, timeout (µs,
-- '' for none), unique key ('' for none), unique window (µs, '' for none), app and tenant
-- (option_arg), concurrency key (option_arg) and its limit ('' for none).
local JOB_STRIDE = 15

-- Whether unique key `uk` is held, and by which job.
local function held_by(uk)
  local holder = redis.call('GET', uk)
  if not holder then return nil end
  local v = redis.call('HMGET', job_key(holder), 'state', 'unique_until')
  if v[1] == 'available' or v[1] == 'running' then return holder end
  if v[2] and tonumber(v[2]) > NOW then return holder end
  return nil
end

-- Check the jobs at argument offsets `bases` before anything is written. Answers a refusal
-- (CONFLICT) for an ID listed twice or already stored with another name or payload; else nil
-- and the set of bases whose job is stored already (a retried enqueue, answered as created).
local function check_jobs(bases)
  local seen, retried, keys = {}, {}, {}
  for _, base in ipairs(bases) do
    local id = ARGV[base]
    if seen[id] then
      return refuse('CONFLICT', 'job ' .. id .. ' is listed twice in one enqueue'), retried
    end
    seen[id] = true
    keys[#keys + 1] = job_key(id)
  end
  -- One EXISTS per 1,000 jobs: new IDs (the common case) read nothing more.
  local any_stored = false
  for i = 1, #keys, 1000 do
    if redis.call('EXISTS', unpack(keys, i, math.min(i + 999, #keys))) > 0 then
      any_stored = true
    end
  end
  if not any_stored then return nil, retried end
  for _, base in ipairs(bases) do
    local stored = redis.call('HMGET', job_key(ARGV[base]), 'name', 'payload')
    if stored[1] then
      if stored[1] ~= ARGV[base + 1] or stored[2] ~= ARGV[base + 3] then
        return refuse('CONFLICT', 'job ' .. ARGV[base] ..
          ' is already stored with another name or payload'), retried
      end
      retried[base] = true
    end
  end
  return nil, retried
end

-- Store the job at `base` (checked by check_jobs, whose `retried` set is given): answers
-- {1, id} (created, or a retried enqueue) or {2, holder id} (its unique key is held).
local function enqueue_job(base, retried)
  local function arg(field) return ARGV[base + field] end
  local id, name = arg(0), arg(1)
  if retried[base] then return { 1, id } end
  local ukey = arg(9)
  local uk = ukey ~= '' and unique_key(name, ukey) or nil
  local holder = uk and held_by(uk) or nil
  if holder then return { 2, holder } end
  local window = arg(10)
  local ckey = option(arg(13))
  -- Only a gated claim looks at keys: a keyed job's queue gets a config if it has none.
  if ckey then ensure_config(arg(2)) end
  insert_job({ id = id, name = name, queue = arg(2), payload = arg(3), priority = arg(4),
    run_at = resolve_run_at(arg(5), arg(6)), max_attempts = arg(7),
    timeout_us = arg(8) ~= '' and arg(8) or nil, unique_key = uk and ukey or nil,
    unique_until = (uk and window ~= '') and NOW + tonumber(window) or nil,
    app = option(arg(11)), tenant = option(arg(12)), ckey = ckey,
    climit = ckey and arg(14) or nil })
  return { 1, id }
end
