--! include lib.lua
-- Erasure: a user leaves matching for good, silently (their data is about to be deleted).
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] user id
-- Their waiting request and talk-later request are dropped; as a survivor they are switched off,
-- taken out of every match index, their pending offers and talk-later cards are withdrawn (the
-- patients are told, as for any withdrawal); their contacts end for both sides, and requests other
-- patients addressed to them (talk_again) are dropped (those patients get later_cancelled /
-- cancelled with reason "unavailable").
-- Returns JSON {forgotten: true}.
local uid = ARGV[5]
leave_matching(uid, 'erased')
for _, pid in ipairs(redis.call('ZRANGE', KEY.later_for(uid), 0, -1)) do
  local lr = hgetall(KEY.later(pid))
  if lr and lr.target == uid then
    drop_later(pid)
    pub(pid, cjson.encode({type = 'later_cancelled', request_id = lr.id, reason = 'unavailable'}))
  end
  local rq = hgetall(KEY.request(pid))
  if rq and rq.target == uid then drop_request(pid, 'unavailable') end
end
redis.call('DEL', KEY.later_for(uid))
for _, kid in ipairs(redis.call('SMEMBERS', KEY.user_contacts(uid))) do end_contact_rec(kid) end
return result({forgotten = true})
