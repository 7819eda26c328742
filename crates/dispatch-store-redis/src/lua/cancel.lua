-- A cancel request for one job (`transition::request_job_cancel`). ARGV[2] = job id, ARGV[3] =
-- the reason a run cancelled through its drive job records (DRIVE_JOB_CANCEL_REASON).
-- Refuses NOT_FOUND for an unknown job. The drive job of a run that has not ended is cancelled
-- through its run (run_cancel_request), the job itself left alone, so the run winds down with
-- its driver. Otherwise: an available job is cancelled now, a running one gets the request its
-- holder reads from its heartbeat, a final one is left as it is.
-- Answers {1} (cancelled), {2} (requested) or {3, state} (already final).
local id, reason = ARGV[2], ARGV[3]
local place = job_place(id)
if not place then return refuse('NOT_FOUND', 'no job ' .. id) end

local final = place.state == 'completed' or place.state == 'cancelled' or place.state == 'dead'
if not final then
  local run = redis.call('HGET', job_key(id), 'run')
  if run then
    local run_state = redis.call('HGET', run_key(run), 'state')
    if run_state and not is_final_run(run_state) then
      run_cancel_request(run, reason)
      flush()
      return { 2 }
    end
  end
end

if place.state == 'available' then
  end_job(id, place, 'available', 'cancelled')
  flush()
  return { 1 }
elseif place.state == 'running' then
  redis.call('HSET', job_key(id), 'cancel_requested', '1')
  return { 2 }
end
return { 3, place.state }
