-- Settle a wait (WorkflowStore::resolve_wait). ARGV[2] = run id, ARGV[3] = drive job id,
-- ARGV[4] = lease token, ARGV[5] = the wait's checkpoint key. Fenced. Answers {1, payload}
-- when an event reached it; else the wait is removed (so no event can reach it any more, in
-- the same step as the check) and the answer is {0}.
local id, key = ARGV[2], ARGV[5]
local _, refused = fence(id, ARGV[3], ARGV[4])
if refused then return refused end
local data = checkpoint_data(id, key)
if data then return { 1, data } end
remove_wait(id, key)
return { 0 }
