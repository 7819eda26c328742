-- One page of cron entries in ID order (`CronStore::list_cron`). ARGV[2] = the cursor (an
-- entry id, '' for the start), ARGV[3] = how many matches to find (the page's limit + 1),
-- ARGV[4] = the most index entries to scan, ARGV[5] = the scope key ('' any), ARGV[6] =
-- enabled ('' either, '1', '0'). Answers {hashes (HGETALL) of the matches; resume}, resume as
-- `walk_lex` answers it.
local want, scope, enabled = tonumber(ARGV[3]), ARGV[5], ARGV[6]
local found = {}
local resume = walk_lex(K_CRONS, ARGV[2], tonumber(ARGV[4]), function(id)
  local v = redis.call('HMGET', cron_key(id), 'scope', 'enabled')
  if v[1] and (scope == '' or v[1] == scope) and (enabled == '' or v[2] == enabled) then
    found[#found + 1] = redis.call('HGETALL', cron_key(id))
  end
  return #found >= want
end)
return { found, resume }
