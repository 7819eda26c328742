-- Publish an event (WorkflowStore::publish_event, as dispatch-store-memory's events::publish).
-- ARGV[2] = event name, ARGV[3] = correlation, ARGV[4], ARGV[5] = app and tenant (option
-- form), ARGV[6] = payload, ARGV[7] = '1' for a broadcast, ARGV[8] = keep_for (µs, saturated).
-- Delivers to the oldest wait of (scope, name, correlation), or to every one for a broadcast:
-- the wait's checkpoint written, the run's drive job due now when it waits. Else a
-- non-broadcast event is kept until publish time + keep_for (a zero keep_for keeps nothing).
-- Answers { kept (0 or 1), run id, ... } with each run once.
local payload, broadcast = ARGV[6], ARGV[7] == '1'
local keep_for = tonumber(ARGV[8])
local part = event_part(ARGV[4], ARGV[5], ARGV[2], ARGV[3])
local index = wait_index_key(part)

local members
if broadcast then
  members = redis.call('ZRANGE', index, 0, -1)
else
  members = redis.call('ZRANGE', index, 0, 0)
end
local delivered, seen = {}, {}
for _, member in ipairs(members) do
  local run, key = string.sub(member, 1, 32), string.sub(member, 33)
  redis.call('ZREM', index, member)
  redis.call('HDEL', run_waits_key(run), key)
  write_checkpoint(run, key, payload)
  if not seen[run] then
    seen[run] = true
    delivered[#delivered + 1] = run
    local drive = redis.call('HGET', run_key(run), 'drive_job')
    if drive then wake_drive(drive) end
  end
end

local kept = 0
if #delivered == 0 and not broadcast and keep_for > 0 then
  prune_kept(part, 100)
  local seq = I(redis.call('INCR', K_EVENT_SEQ))
  redis.call('ZADD', kept_key(part), seq, seq)
  redis.call('HSET', kept_data_key(part), 'p:' .. seq, payload, 'e:' .. seq, I(NOW + keep_for))
  redis.call('ZADD', K_KEPT_EXPIRY, NOW + keep_for, kept_expiry_member(part, seq))
  kept = 1
end
flush()
local out = { kept }
for _, run in ipairs(delivered) do out[#out + 1] = run end
return out
