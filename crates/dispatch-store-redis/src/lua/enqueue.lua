-- Enqueue a batch. ARGV[2] = item count, then 13 arguments per item (`enqueue_jobs.lua`).
-- Refuses the whole batch (CONFLICT) on a reused or repeated ID, before writing anything.
-- Answers one {1, id} (created, or a retried enqueue) or {2, holder id} (duplicate) per item.
local n = tonumber(ARGV[2])
local bases = {}
for i = 0, n - 1 do bases[#bases + 1] = 3 + i * JOB_STRIDE end
local refused, retried = check_jobs(bases)
if refused then return refused end
local out = {}
for _, base in ipairs(bases) do out[#out + 1] = enqueue_job(base, retried) end
flush()
return out
