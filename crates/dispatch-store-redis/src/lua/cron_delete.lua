-- Delete a cron entry with its index entries (`CronStore::delete_cron`). ARGV[2] = its id.
-- Jobs it enqueued stay. Answers 1 when it existed, else 0.
local id = ARGV[2]
local key = cron_key(id)
local name_key = redis.call('HGET', key, 'name_key')
if not name_key then return 0 end
if redis.call('HGET', K_CRON_NAMES, name_key) == id then
  redis.call('HDEL', K_CRON_NAMES, name_key)
end
redis.call('DEL', key)
redis.call('ZREM', K_CRONS, id)
redis.call('ZREM', K_CRON_DUE, id)
return 1
