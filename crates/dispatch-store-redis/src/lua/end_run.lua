-- End a run (WorkflowStore::end_run). ARGV[2] = run id, ARGV[3] = drive job id, ARGV[4] =
-- lease token, ARGV[5] = final state (completed, failed, cancelled), ARGV[6] = the output
-- (completed) or the error. Fenced. Its waits are removed; the drive job is the runtime's to
-- finish.
local id = ARGV[2]
local state, refused = fence(id, ARGV[3], ARGV[4])
if refused then return refused end
local field = 'error'
if ARGV[5] == 'completed' then field = 'output' end
end_run_record(id, state, ARGV[5], field, ARGV[6])
return 1
