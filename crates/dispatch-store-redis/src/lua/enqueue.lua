-- Enqueue a batch. ARGV[2] = item count, then 13 arguments per item:
-- id, name, queue, payload, priority, run-at kind (now|at|after), run-at value (µs),
-- max attempts, timeout (µs, '' for none), unique key ('' for none), unique window (µs, '' for
-- none), app and tenant ('-' for none, '+<value>' for a value).
-- Answers one {1, id} (created, or a retried enqueue) or {2, holder id} (duplicate) per item.
local STRIDE = 13
local n = tonumber(ARGV[2])

local function arg(i, field) return ARGV[3 + i * STRIDE + field] end

-- Whether unique key `uk` is held, and by which job.
local function held_by(uk)
  local holder = redis.call('GET', uk)
  if not holder then return nil end
  local v = redis.call('HMGET', job_key(holder), 'state', 'unique_until')
  if v[1] == 'available' or v[1] == 'running' then return holder end
  if v[2] and tonumber(v[2]) > NOW then return holder end
  return nil
end

-- Pass 1: refuse the whole batch on a reused or repeated ID, before writing anything.
local seen, retried, keys = {}, {}, {}
for i = 0, n - 1 do
  local id = arg(i, 0)
  if seen[id] then return refuse('CONFLICT', 'job ' .. id .. ' is listed twice in one enqueue') end
  seen[id] = true
  keys[#keys + 1] = job_key(id)
end
-- One EXISTS for the batch: new IDs (the common case) read nothing more.
local any_stored = false
for i = 1, #keys, 1000 do
  if redis.call('EXISTS', unpack(keys, i, math.min(i + 999, #keys))) > 0 then any_stored = true end
end
for i = 0, n - 1 do
  local id = arg(i, 0)
  local stored = any_stored and redis.call('HMGET', job_key(id), 'name', 'payload') or {}
  if stored[1] then
    if stored[1] ~= arg(i, 1) or stored[2] ~= arg(i, 3) then
      return refuse('CONFLICT', 'job ' .. id .. ' is already stored with another name or payload')
    end
    retried[i] = true
  end
end

-- Pass 2: store what is new.
local out = {}
for i = 0, n - 1 do
  local id, name, queue = arg(i, 0), arg(i, 1), arg(i, 2)
  local ukey = arg(i, 9)
  local uk = ukey ~= '' and unique_key(name, ukey) or nil
  local holder = (not retried[i]) and uk and held_by(uk) or nil
  if retried[i] then
    out[#out + 1] = { 1, id }
  elseif holder then
    out[#out + 1] = { 2, holder }
  else
    local window = arg(i, 10)
    insert_job({ id = id, name = name, queue = queue, payload = arg(i, 3), priority = arg(i, 4),
      run_at = resolve_run_at(arg(i, 5), arg(i, 6)), max_attempts = arg(i, 7),
      timeout_us = arg(i, 8) ~= '' and arg(i, 8) or nil, unique_key = uk and ukey or nil,
      unique_until = (uk and window ~= '') and NOW + tonumber(window) or nil,
      app = option(arg(i, 11)), tenant = option(arg(i, 12)) })
    out[#out + 1] = { 1, id }
  end
end
flush()
return out
