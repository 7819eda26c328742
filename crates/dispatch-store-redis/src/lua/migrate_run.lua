-- Move a run to another version (WorkflowStore::migrate_run, as dispatch-store-memory's
-- migrate). ARGV[2] = run id, ARGV[3] = version, ARGV[4] = the version's drive job name.
-- Refuses NOT_FOUND, and CONFLICT while a drive holds the run or once it completed, before any
-- write. A failed or cancelled run runs again; a waiting drive job keeps its wake time.
local id, version, name = ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('HMGET', run_key(id), 'state', 'drive_job')
if not v[1] then return refuse('NOT_FOUND', 'no run ' .. id) end
local place = job_place(v[2])
if place and place.state == 'running' then
  return refuse('CONFLICT', 'a drive holds run ' .. id)
end
if v[1] == 'completed' then return refuse('CONFLICT', 'run ' .. id .. ' has completed') end

redis.call('HSET', run_key(id), 'version', version, 'updated_at', NOW_S)
if is_final_run(v[1]) then reopen_run(id, v[1]) end
local run_at = NOW
if place and place.state == 'available' then run_at = place.run_at end
rearm_drive(v[2], name, run_at)
flush()
return 1
