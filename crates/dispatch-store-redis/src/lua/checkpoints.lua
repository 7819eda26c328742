-- Read a run's checkpoints without a fence (WorkflowStore::get_checkpoints). ARGV[2] = run id.
-- Answers the checkpoints_of list (key, data, time, ...), or refuses NOT_FOUND.
local id = ARGV[2]
if redis.call('EXISTS', run_key(id)) == 0 then return refuse('NOT_FOUND', 'no run ' .. id) end
return checkpoints_of(id)
