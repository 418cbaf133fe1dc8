--! include lib.lua
-- A patient changes their waiting talk-now request's profile and same-diagnosis hold, keeping their
-- place in line (the queue's enqueue time is untouched); the request is re-indexed under its new
-- topics and languages and matched again at once.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] patient id  ARGV[6] diagnoses JSON  ARGV[7] side effects JSON  ARGV[8] languages JSON
-- ARGV[9] prefer_same_diagnosis_s, counted from when the request was made (0 = no hold)
-- Returns JSON {state, created?}.  Refuses: not_found (no talk-now request of theirs that can be
-- widened: none, or a talk_again request, which asks for one survivor).
local pid = ARGV[5]
local rq = hgetall(KEY.request(pid))
if not rq or (rq.target and rq.target ~= '') then
  return refuse('not_found', 'You have no waiting request to widen.')
end
set_ready(pid, rq, false)                 -- out of the indexes of the old profile
local hold = tonumber(ARGV[9]) or 0
local strict = 0
if hold > 0 then strict = tonumber(rq.created) + hold end
redis.call('HSET', KEY.request(pid), 'dx', ARGV[6], 'se', ARGV[7], 'lang', ARGV[8], 'strict', strict)
redis.call('ZREM', KEY.relax, pid)
if strict > NOW then redis.call('ZADD', KEY.relax, strict, pid) end
redis.call('HINCRBY', KEY.stats, 'widened', 1)
sync_ready(pid)                           -- into those of the new one (when waiting and present)
try_match(pid)
local after = hgetall(KEY.request(pid))
if not after then return result({state = 'matched'}) end
local f = queued_frame(pid, true)
if f then pub(pid, f) end
return result({state = after.state})
