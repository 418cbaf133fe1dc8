--! include lib.lua
-- A conversation ends (by a participant, a block, or a moderator): frees the survivor's slot.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] conversation id  ARGV[6] user id of who ends it  ARGV[7] role of who ends it
-- ARGV[8] "1" to block the pair from ever matching again  ARGV[9] reason (may be empty)
-- Returns JSON {ended: bool (false if it had ended already), patient, survivor, created?}.
-- Refuses: forbidden (not a participant, unless a moderator; also for unknown conversations).
local cid, by, role, block, reason = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local key = KEY.conversation(cid)
local cv = hgetall(key)
if not cv or (role ~= 'moderator' and by ~= cv.patient and by ~= cv.survivor) then
  return refuse('forbidden', 'You are not part of that conversation.')
end
local pid, sid = cv.patient, cv.survivor
if block == '1' and role ~= 'moderator' then
  redis.call('SADD', KEY.blocks(pid), sid)
  redis.call('SADD', KEY.blocks(sid), pid)
  end_contacts_between(pid, sid)                  -- a block ends a kept contact too
end
if cv.state == 'ended' then return result({ended = false, patient = pid, survivor = sid}) end
redis.call('HSET', key, 'state', 'ended', 'ended_by', by, 'ended_role', role, 'ended_at', NOW)
redis.call('SREM', KEY.user_convs(pid), cid)
redis.call('SREM', KEY.user_convs(sid), cid)
redis.call('SREM', KEY.peers(pid), sid)
redis.call('ZADD', KEY.ended, NOW, cid)
redis.call('HINCRBY', KEY.survivor(sid), 'act', -1)
if tonumber(CFG.cooldown_s) > 0 then
  redis.call('HSET', KEY.survivor(sid), 'cool', NOW + tonumber(CFG.cooldown_s))
  redis.call('ZADD', KEY.cooldowns, 'GT', NOW + tonumber(CFG.cooldown_s), sid)   -- GT: a later wake-up stays
end
local f = {type = 'ended', conversation_id = cid, by = role}
if reason ~= '' then f.reason = reason end
if block == '1' and role ~= 'moderator' then f.blocked = true end
pub(pid, cjson.encode(f))
pub(sid, cjson.encode(f))
note_free(sid)
serve_survivor(sid)
return result({ended = true, patient = pid, survivor = sid})
