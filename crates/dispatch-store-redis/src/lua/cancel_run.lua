-- Ask a run to stop (WorkflowStore::request_run_cancel). ARGV[2] = run id, ARGV[3] = reason.
-- Answers {1} (requested) or {0, state} when the run had already ended; refuses NOT_FOUND.
local id = ARGV[2]
local state = redis.call('HGET', run_key(id), 'state')
if not state then return refuse('NOT_FOUND', 'no run ' .. id) end
if is_final_run(state) then return { 0, state } end
run_cancel_request(id, ARGV[3])
flush()
return { 1 }
