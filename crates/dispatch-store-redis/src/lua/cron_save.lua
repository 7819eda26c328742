-- Insert or update a cron entry by its (scope, name) (`CronStore::save_cron`). ARGV[2] = the
-- name key, ARGV[3] = the id a new entry takes, ARGV[4] = its scope key, ARGV[5] = the entry
-- JSON, ARGV[6] = its `when`, ARGV[7] = enabled ('1'|'0'), ARGV[8] = the next fire (µs, ''
-- none). A new entry, or an update that changes `when` or enables a disabled entry, takes the
-- next fire; any other update keeps the stored one. Answers the entry's hash (HGETALL).
local name_key, when, enabled = ARGV[2], ARGV[6], ARGV[7]
local id = redis.call('HGET', K_CRON_NAMES, name_key)
local take = true
if id then
  local v = redis.call('HMGET', cron_key(id), 'when', 'enabled')
  take = v[1] ~= when or (enabled == '1' and v[2] ~= '1')
else
  id = ARGV[3]
  redis.call('HSET', K_CRON_NAMES, name_key, id)
  redis.call('ZADD', K_CRONS, 0, id)
  redis.call('HSET', cron_key(id), 'id', id, 'name_key', name_key, 'created_at', NOW_S)
end
local key = cron_key(id)
redis.call('HSET', key, 'scope', ARGV[4], 'entry', ARGV[5], 'when', when, 'enabled', enabled,
  'updated_at', NOW_S)
if take then set_time(key, 'next_fire', ARGV[8]) end
cron_place(id, enabled, redis.call('HGET', key, 'next_fire'))
zflush()
return redis.call('HGETALL', key)
