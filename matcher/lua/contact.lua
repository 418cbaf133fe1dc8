--! include lib.lua
-- Keep in touch: a participant asks to keep the contact; ending a contact.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] "keep" | "end"  ARGV[6] user id  ARGV[7] conversation id (keep) | contact id (end)
-- keep: noted for that participant (during or after the conversation; {type: "keep_in_touch_sent",
--   conversation_id} to them); once both have asked, a contact is made and both get
--   {type: "contact", contact_id, peer: {name, role}}.  The contact id is random: it says nothing
--   about who is in it.  Not made for a pair that blocked each other.
--   Returns JSON {contact_id?}.  Refuses: forbidden (not a participant; also for unknown conversations).
-- end: the contact ends for both; the other side is not told (it leaves their contacts).  The
--   asker gets {type: "contact_ended", contact_id}.  Returns JSON {ended: true}.
--   Refuses: not_found (no such contact of theirs: ended, or never theirs; the same answer).
local op, uid = ARGV[5], ARGV[6]
if op == 'end' then
  local kid = ARGV[7]
  local ct = hgetall(KEY.contact(kid))
  if not ct or (ct.patient ~= uid and ct.survivor ~= uid) then
    return refuse('not_found', 'That contact is not open.')
  end
  end_contact_rec(kid)
  redis.call('HINCRBY', KEY.stats, 'contacts_ended', 1)
  pub(uid, cjson.encode({type = 'contact_ended', contact_id = kid}))
  return result({ended = true})
end
local cid = ARGV[7]
local cv = hgetall(KEY.conversation(cid))
if not cv or (uid ~= cv.patient and uid ~= cv.survivor) then
  return refuse('forbidden', 'You are not part of that conversation.')
end
local pid, sid = cv.patient, cv.survivor
local function contact_frame(kid, to)
  if to == pid then
    return cjson.encode({type = 'contact', contact_id = kid, peer = {name = cv.survivor_name, role = 'survivor'}})
  end
  return cjson.encode({type = 'contact', contact_id = kid, peer = {name = cv.patient_name, role = 'patient'}})
end
pub(uid, cjson.encode({type = 'keep_in_touch_sent', conversation_id = cid}))
if cv.contact and cv.contact ~= '' and redis.call('EXISTS', KEY.contact(cv.contact)) == 1 then
  pub(uid, contact_frame(cv.contact, uid))
  return result({contact_id = cv.contact})
end
if redis.call('SISMEMBER', KEY.blocks(pid), sid) == 1 then return result({}) end
redis.call('SADD', KEY.keep_in_touch(cid), uid)
local other = pid
if uid == pid then other = sid end
if redis.call('SISMEMBER', KEY.keep_in_touch(cid), other) == 0 then return result({}) end
local shared = cjson.decode(cv.shared)
local kid = newid('k')
redis.call('HSET', KEY.contact(kid), 'patient', pid, 'survivor', sid, 'patient_name', cv.patient_name,
           'survivor_name', cv.survivor_name, 'dx', jarr(shared.diagnoses or {}), 'se', jarr(shared.side_effects or {}),
           'lang', cv.plang or '[]', 'created', NOW)
redis.call('SADD', KEY.user_contacts(pid), kid)
redis.call('SADD', KEY.user_contacts(sid), kid)
redis.call('HSET', KEY.conversation(cid), 'contact', kid)
redis.call('DEL', KEY.keep_in_touch(cid))
redis.call('HINCRBY', KEY.stats, 'contacts_made', 1)
pub(pid, contact_frame(kid, pid))
pub(sid, contact_frame(kid, sid))
return result({contact_id = kid})
