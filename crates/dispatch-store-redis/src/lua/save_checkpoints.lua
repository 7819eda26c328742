-- Write checkpoints (WorkflowStore::save_checkpoints). ARGV[2] = run id, ARGV[3] = drive job
-- id, ARGV[4] = lease token, then key, data pairs in write order. Fenced: nothing is written
-- when the lease does not hold. A key listed twice keeps its first place and its later data.
local id = ARGV[2]
local _, refused = fence(id, ARGV[3], ARGV[4])
if refused then return refused end
for i = 5, #ARGV - 1, 2 do write_checkpoint(id, ARGV[i], ARGV[i + 1]) end
return 1
