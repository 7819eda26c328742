-- Extend the lease of term ARGV[3] of holder ARGV[4] of leadership ARGV[2] to NOW + ARGV[5] µs
-- (`cluster::renew`), when it still holds (`cluster::holds`). Answers the leader as stored
-- (HGETALL), or {} when the term is no longer valid (nothing changes).
local name, term, holder, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local current = read_leader(name)
if not leader_holds(current, term, holder) then return {} end
return write_leader(name, renewed(current, ttl))
