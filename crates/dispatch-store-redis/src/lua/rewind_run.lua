-- Rewind a run to a checkpoint (WorkflowStore::rewind_run, as dispatch-store-memory's
-- rewind). ARGV[2] = run id, ARGV[3] = checkpoint key. Refuses NOT_FOUND (run or key) and
-- CONFLICT while a drive holds the run (its drive job is running), before any write.
local id, key = ARGV[2], ARGV[3]
local v = redis.call('HMGET', run_key(id), 'state', 'drive_job')
if not v[1] then return refuse('NOT_FOUND', 'no run ' .. id) end
if redis.call('HGET', job_key(v[2]), 'state') == 'running' then
  return refuse('CONFLICT', 'a drive holds run ' .. id)
end
local place = redis.call('ZSCORE', ckpt_order_key(id), key)
if not place then return refuse('NOT_FOUND', 'run ' .. id .. ' has no checkpoint ' .. key) end

drop_checkpoints_after(id, place)
reopen_run(id, v[1])
remove_waits(id)
rearm_drive(v[2], nil, NOW)
flush()
return 1
