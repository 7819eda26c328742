-- DLQ helpers of the DLQ scripts (`script.rs` adds this file to those only): the filter
-- (`DlqFilter::matches`), a bounded walk of the index, and replay.

-- The filter at ARGV[base] .. ARGV[base + 7], as `dlq.rs`'s `filter_args` writes it: queue,
-- name, app, tenant (option_arg), failed at or after and failed before (µs, '' for any), the
-- last error's text (option_arg), replayed ('' either, '1' replayed, '0' not).
local function dlq_filter(base)
  local function time(arg) return arg ~= '' and tonumber(arg) or nil end
  return { queue = option(ARGV[base]), name = option(ARGV[base + 1]),
    app = option(ARGV[base + 2]), tenant = option(ARGV[base + 3]),
    after = time(ARGV[base + 4]), before = time(ARGV[base + 5]),
    text = option(ARGV[base + 6]), replayed = ARGV[base + 7] }
end

-- Whether entry `id` matches filter `f` (`DlqFilter::matches`): its { queue, name } when it
-- does, else nil (also for an entry gone meanwhile). The error history is decoded only when
-- the filter asks for text, and only once every other field matched.
local function dlq_matches(f, id)
  local v = redis.call('HMGET', dlq_key(id), 'queue', 'name', 'app', 'tenant', 'failed_at',
    'replayed_as')
  if not v[1] then return nil end
  if (f.queue and v[1] ~= f.queue) or (f.name and v[2] ~= f.name)
    or (f.app and v[3] ~= f.app) or (f.tenant and v[4] ~= f.tenant) then
    return nil
  end
  local at = tonumber(v[5])
  if (f.after and at < f.after) or (f.before and at >= f.before) then return nil end
  if (f.replayed == '1' and not v[6]) or (f.replayed == '0' and v[6]) then return nil end
  if f.text then
    local errors = cjson.decode(redis.call('HGET', dlq_key(id), 'errors') or '[]')
    local last = errors[#errors]
    -- A plain (not pattern) find: bytewise and case-sensitive, as `str::contains`.
    if not last or not string.find(last.message, f.text, 1, true) then return nil end
  end
  return { v[1], v[2] }
end

-- Walk the DLQ index from `cursor` with `walk_lex` (prelude.lua).
local function dlq_walk(cursor, budget, visit)
  return walk_lex(K_DLQ, cursor, budget, visit)
end

-- Replay entry `dlq_id` as new job `job_id`, as `transition::replay` makes it: the entry's
-- name, payload, priority, max attempts, timeout and scope, fresh attempts, in `queue` (nil:
-- the entry's), due `delay` µs after NOW; the entry is marked in the same call, so concurrent
-- replays make one job. Answers {1, job_id}, {2, earlier id} when it was replayed before, or
-- nil when there is no such entry.
local function replay_entry(dlq_id, job_id, queue, delay)
  local key = dlq_key(dlq_id)
  local v = redis.call('HMGET', key, 'name', 'queue', 'payload', 'priority', 'max_attempts',
    'timeout_us', 'app', 'tenant', 'replayed_as')
  if not v[1] then return nil end
  if v[9] then return { 2, v[9] } end
  insert_job({ id = job_id, name = v[1], queue = queue or v[2], payload = v[3],
    priority = v[4], run_at = math.min(NOW + delay, MAX_TIME), max_attempts = v[5],
    timeout_us = v[6] or nil, app = v[7] or nil, tenant = v[8] or nil }, nil)
  redis.call('HSET', key, 'replayed_as', job_id, 'replayed_at', NOW_S)
  return { 1, job_id }
end
