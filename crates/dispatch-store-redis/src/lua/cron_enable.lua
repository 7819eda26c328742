-- Enable or disable a cron entry (`CronStore::set_cron_enabled`). ARGV[2] = its id, ARGV[3] =
-- enabled ('1'|'0'), ARGV[4] = the next fire an enabled disabled entry takes (µs, '' none).
-- Refuses NOT_FOUND for an unknown entry. Answers the entry's hash (HGETALL).
local id, enabled = ARGV[2], ARGV[3]
local key = cron_key(id)
local was = redis.call('HGET', key, 'enabled')
if not was then return refuse('NOT_FOUND', 'no cron entry ' .. id) end
if enabled == '1' and was ~= '1' then set_time(key, 'next_fire', ARGV[4]) end
redis.call('HSET', key, 'enabled', enabled, 'updated_at', NOW_S)
cron_place(id, enabled, redis.call('HGET', key, 'next_fire'))
zflush()
return redis.call('HGETALL', key)
