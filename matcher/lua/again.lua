--! include lib.lua
-- talk_again: a patient asks for a survivor they keep in touch with, and only them.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] patient id  ARGV[6] display name  ARGV[7] contact id  ARGV[8] max requests per hour
-- ARGV[9] when the asking session's token was issued ("" = unknown)  ARGV[10] talk-later lifetime (s)
-- When that survivor is open to offers now (available, online, a free slot, no pause, under the
-- daily cap, not blocked) it is a live talk-now request addressed to them: the normal offer, with
-- its timeout; a decline or lapse ends it ("cancelled", reason "declined").  Otherwise it becomes
-- the patient's talk-later request addressed to them (replacing one waiting), offered as a card
-- when they are next open to offers.  A live talk-now request of the patient's is joined instead.
-- Returns JSON {mode: "live"|"later"|"joined", state?, request_id?, expires_at?}.
-- Refuses: not_found (no such contact of this patient: ended, or never theirs; the same answer);
-- forbidden (erased); suspended; rate_limited.
local pid, kid = ARGV[5], ARGV[7]
if erased_session(pid, ARGV[9]) then return refuse('forbidden', 'This account was erased.') end
local ct = hgetall(KEY.contact(kid))
if not ct or ct.patient ~= pid then return refuse('not_found', 'That contact is not open.') end
if is_suspended(pid) then return refuse('suspended', 'Your account is suspended.') end
local sid = ct.survivor
if redis.call('EXISTS', KEY.request(pid)) == 1 then
  local f = queued_frame(pid, true)
  if f then pub(pid, f) end
  return result({mode = 'joined', state = redis.call('HGET', KEY.request(pid), 'state')})
end
if over_hourly_cap(pid, ARGV[8]) then
  return refuse('rate_limited', 'Too many requests this hour; please wait a little.')
end
local sv = hgetall(KEY.survivor(sid))
local lang = (sv and sv.lang) or ct.lang or '[]'
local probe = {lang = lang}
if sv and sv.idx == '1' and pair_ok(pid, probe, sid) then
  local lr = hgetall(KEY.later(pid))
  if lr and lr.target == sid then drop_later(pid) end     -- superseded by the live request
  redis.call('HSET', KEY.request(pid), 'name', ARGV[6], 'dx', ct.dx, 'se', ct.se, 'lang', lang, 'created', NOW,
             'state', 'waiting', 'offer', '', 'strict', 0, 'away', 0, 'target', sid)
  redis.call('ZADD', KEY.queue, NOW, pid)
  redis.call('ZADD', KEY.later_for(sid), NOW, pid)
  redis.call('HINCRBY', KEY.stats, 'requests', 1)
  redis.call('HINCRBY', KEY.stats, 'talk_again', 1)
  hold_later(pid)
  try_match(pid)
  local after = hgetall(KEY.request(pid))
  if after then
    local f = queued_frame(pid, true)
    if f then pub(pid, f) end
  end
  return result({mode = 'live', state = (after and after.state) or 'matched'})
end
drop_later(pid)
local rid = newid('l')
local expires = NOW + tonumber(ARGV[10])
redis.call('HSET', KEY.later(pid), 'id', rid, 'name', ARGV[6], 'dx', ct.dx, 'se', ct.se, 'lang', lang,
           'note', '', 'created', NOW, 'expires', expires, 'target', sid)
redis.call('ZADD', KEY.later_deadlines, expires, pid)
later_sets(pid, hgetall(KEY.later(pid)), true)
redis.call('HINCRBY', KEY.stats, 'later_requests', 1)
redis.call('HINCRBY', KEY.stats, 'talk_again', 1)
pub(pid, cjson.encode({type = 'later', request_id = rid, expires_at = expires, contact_id = kid}))
spread_later(pid)
return result({mode = 'later', request_id = rid, expires_at = expires})
