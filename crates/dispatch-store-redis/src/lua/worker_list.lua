-- Every registered worker (`MembershipStore::list_workers`), by ID: one HGETALL answer each.
-- The registry is bounded by the workers that run (and gone ones until they are removed).
local out = {}
for _, id in ipairs(redis.call('ZRANGE', K_WORKERS, 0, -1)) do
  local hash = redis.call('HGETALL', worker_key(id))
  if #hash > 0 then out[#out + 1] = hash end
end
return out
