-- The due cron entries (`CronStore::due_cron`): enabled entries whose next fire is at or
-- before NOW, soonest first (then by id), at most ARGV[2]. Answers {NOW, hashes (HGETALL)}.
local ids = redis.call('ZRANGEBYSCORE', K_CRON_DUE, '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGETALL', cron_key(id)) end
return { NOW_S, out }
