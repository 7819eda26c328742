-- Heartbeat a batch of leases (`transition::renew`, see renew_leases in jobs.lua). ARGV[2] =
-- lease TTL (µs), then a job id and a lease token per lease. Answers one code per lease: 0
-- lost, 1 renewed, 2 renewed with a cancel request.
return renew_leases(tonumber(ARGV[2]), 3)
