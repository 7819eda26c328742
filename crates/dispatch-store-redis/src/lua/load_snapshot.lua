-- Begin a drive (WorkflowStore::load_snapshot). ARGV[2] = run id, ARGV[3] = drive job id,
-- ARGV[4] = lease token. Fenced. A suspended run becomes running and waits for nothing.
-- Answers { run hash, checkpoints_of list, NOW }.
local id = ARGV[2]
local state, refused = fence(id, ARGV[3], ARGV[4])
if refused then return refused end
if state == 'suspended' then
  redis.call('HSET', run_key(id), 'state', 'running', 'updated_at', NOW_S)
  redis.call('HDEL', run_key(id), 'waiting')
  move_run_state(id, 'suspended', 'running')
end
return { redis.call('HGETALL', run_key(id)), checkpoints_of(id), NOW_S }
