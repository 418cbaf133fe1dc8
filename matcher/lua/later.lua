--! include lib.lua
-- Talk-later requests: made, or cancelled by their patient.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] "create" | "cancel"  ARGV[6] patient id
-- create: ARGV[7] display name  ARGV[8] diagnoses JSON  ARGV[9] side effects JSON  ARGV[10] languages JSON
--         ARGV[11] note (moderated by the caller; "" = none)  ARGV[12] lifetime (s)
--         ARGV[13] when the asking session's token was issued ("" = unknown)  ARGV[14] max requests per hour
--   A patient has at most one: a new one replaces the one waiting (its cards are withdrawn).  The
--   request is offered at once to a few fitting survivors open to offers (unless the patient has a
--   live talk-now request: that comes first), later to each fitting survivor who frees up.
--   Publishes {type: "later", request_id, expires_at} to the patient.
--   Returns JSON {request_id, expires_at}.  Refuses: forbidden (erased), suspended, rate_limited.
-- cancel: ARGV[7] request id.  Publishes {type: "later_cancelled", request_id}.
--   Returns JSON {cancelled: true}.  Refuses: not_found (no such request of this patient).
local op, pid = ARGV[5], ARGV[6]
if op == 'cancel' then
  local lr = hgetall(KEY.later(pid))
  if not lr or lr.id ~= ARGV[7] then return refuse('not_found', 'That request is no longer open.') end
  drop_later(pid)
  pub(pid, cjson.encode({type = 'later_cancelled', request_id = lr.id}))
  return result({cancelled = true})
end
if erased_session(pid, ARGV[13]) then return refuse('forbidden', 'This account was erased.') end
if is_suspended(pid) then return refuse('suspended', 'Your account is suspended.') end
if over_hourly_cap(pid, ARGV[14]) then
  return refuse('rate_limited', 'Too many requests this hour; please wait a little.')
end
drop_later(pid)
local rid = newid('l')
local expires = NOW + tonumber(ARGV[12])
redis.call('HSET', KEY.later(pid), 'id', rid, 'name', ARGV[7], 'dx', ARGV[8], 'se', ARGV[9], 'lang', ARGV[10],
           'note', ARGV[11], 'created', NOW, 'expires', expires, 'target', '')
redis.call('ZADD', KEY.later_deadlines, expires, pid)
later_sets(pid, hgetall(KEY.later(pid)), true)
redis.call('HINCRBY', KEY.stats, 'later_requests', 1)
pub(pid, cjson.encode({type = 'later', request_id = rid, expires_at = expires}))
spread_later(pid)
return result({request_id = rid, expires_at = expires})
