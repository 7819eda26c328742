-- Take or keep leadership ARGV[2] for holder ARGV[3] with a lease of ARGV[4] µs
-- (`cluster::acquire`): a valid term of the same holder is renewed (same term); a free or
-- expired leadership is taken under the next term; a valid term of another holder stays.
-- Answers the leader as stored (HGETALL), or {} when another holds it.
local name, holder, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local current = read_leader(name)
if current and leader_valid(current) then
  if current.holder ~= holder then return {} end
  return write_leader(name, renewed(current, ttl))
end
return write_leader(name, next_term(current, holder, ttl))
