-- Record progress reports (`FlowStore::record_progress`). From ARGV[2] on, per report: job id,
-- lease token, progress (JSON). A report is written only while its token holds the running job
-- (`transition::holds`). Answers one 1 (written) or 0 (lease lost) per report.
local out = {}
for i = 2, #ARGV - 2, 3 do
  local key = job_key(ARGV[i])
  local v = redis.call('HMGET', key, 'state', 'lease_token')
  if v[1] == 'running' and v[2] == ARGV[i + 1] then
    redis.call('HSET', key, 'progress', ARGV[i + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
