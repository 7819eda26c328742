-- Cron entries (`src/cron.rs`; `script.rs` adds this file to the cron scripts only).
-- An entry is a hash: id, name_key (its (scope, name) as `cron.rs` spells it), scope (its
-- scope, spelled likewise), entry (the `CronEntry` JSON; its `enabled` is the field below),
-- when (its schedule and time zone: an update that changes it takes a new next fire), enabled
-- ('1'|'0'), next_fire (µs; absent when the schedule has no further time), last_fired (µs),
-- last_job (id), created_at, updated_at.
local function cron_key(id) return P .. ':cron:' .. id end
-- (scope, name) -> id: field name_key, value the entry's id.
local K_CRON_NAMES = P .. ':cronnames'
-- Every entry (score 0, lexical by id), for listing.
local K_CRONS = P .. ':crons'
-- Enabled entries that have a next fire, scored by it: due reads take them by score.
local K_CRON_DUE = P .. ':crondue'

-- Set (or, for '', clear) field `field` of hash `key` to time argument `arg`.
local function set_time(key, field, arg)
  if arg == '' then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, arg)
  end
end

-- Keep entry `id` in the due index as it now stands (at flush): there while it is enabled
-- ('1') with a next fire (µs string, nil or '' for none).
local function cron_place(id, enabled, next_fire)
  if enabled == '1' and next_fire and next_fire ~= '' then
    zadd(K_CRON_DUE, tonumber(next_fire), id)
  else
    zrem(K_CRON_DUE, id)
  end
end
