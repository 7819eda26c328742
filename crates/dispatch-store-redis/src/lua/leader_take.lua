-- Take leadership ARGV[2] for holder ARGV[3] under the next term with a lease of ARGV[4] µs,
-- whoever holds it (`cluster::take`: an election decided outside the store). Answers the
-- leader as stored (HGETALL).
local name, holder, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
return write_leader(name, next_term(read_leader(name), holder, ttl))
