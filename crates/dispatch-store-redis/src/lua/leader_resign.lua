-- Step down: term ARGV[3] of holder ARGV[4] of leadership ARGV[2] ends at NOW when it still
-- holds (`cluster::holds`), so the leadership is free at once and its next holder takes the
-- next term; otherwise nothing changes. Answers 1 when it resigned, 0 otherwise.
local name, term, holder = ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not leader_holds(read_leader(name), term, holder) then return 0 end
redis.call('HSET', leader_key(name), 'expires_at', NOW_S)
return 1
