-- Release the leases one claim wrote (`JobStore::release_claim`: as finish with Release, so
-- `transition::finish` and `give_back`), over one stretch of the running jobs per call.
-- ARGV[2] = the claim's lease token, ARGV[3] = the scan cursor of K_LEASES ('0' to start),
-- ARGV[4] = how many entries to ask the scan for. Each running job whose lease holds the token
-- becomes available now with its attempt returned, its `last_finish` the token (a release
-- applied). Answers {released, next cursor ('0' at the end)}. Rare path (a claim whose answer
-- was lost), so it scans the running jobs instead of keeping an index per token.
local token = ARGV[2]
local scan = redis.call('ZSCAN', K_LEASES, ARGV[3], 'COUNT', tonumber(ARGV[4]))
local entries = scan[2]
local released = 0
for i = 1, #entries, 2 do
  local id = entries[i]
  local lease = job_lease(id)
  if holds(lease, token) then
    redis.call('HSET', job_key(id), 'last_finish', token)
    give_back(id, lease, NOW)
    released = released + 1
  end
end
flush()
return { released, scan[1] }
