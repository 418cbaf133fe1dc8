--! include group_lib.lua
-- group_leave.lua: a member leaves (or is removed), or someone leaves the waitlist; a freed place goes to
-- the head of the waitlist in the same step, so the group is never over capacity and never has room
-- while someone waits.
-- KEYS[1] meta  KEYS[2] members  KEYS[3] names  KEYS[4] waitlist  KEYS[5] waiting  KEYS[6] removed  KEYS[7] muted
-- ARGV[1] who: a user id ('leave', 'erase'), or a member's name in the group ('remove')
-- ARGV[2] mode: 'leave' | 'remove' (by a facilitator or moderator: they may not rejoin) | 'erase'
-- ARGV[3] (remove) the actor's id  ARGV[4] (remove) the actor is a moderator (1|0)
-- Returns {was ('member'|'waitlisted'|'none'), the user id, their name, promoted...} where promoted is a
-- flat list of (user id, name, role, facilitator) of everyone who moved from the waitlist into the group.
-- Refuses: not_found (no such group, or 'remove' of a name that is not a member), forbidden ('remove' by
-- someone who may not lead this group, or of a facilitator or oneself).
local mode = ARGV[2]
local m = redis.call('HMGET', KEYS[1], 'kind', 'state', 'capacity')
if m[1] ~= 'group' then
  return redis.error_reply('AT:not_found:There is no such group.')
end
local uid = ARGV[1]
if mode == 'remove' then
  if not may_lead(KEYS[2], ARGV[3], ARGV[4]) then
    return redis.error_reply('AT:forbidden:You are not part of that group.')
  end
  uid = redis.call('HGET', KEYS[3], ARGV[1])
  if not uid then
    return redis.error_reply('AT:not_found:Nobody of that name is in this group.')
  end
  local target = split_record(redis.call('HGET', KEYS[2], uid) or ('' .. US .. '' .. US .. '0'))
  if uid == ARGV[3] or target[3] == '1' then
    return redis.error_reply('AT:forbidden:A facilitator cannot be removed, nor can you remove yourself.')
  end
end
local out
local rec = redis.call('HGET', KEYS[2], uid)
if rec then
  local f = split_record(rec)
  redis.call('HDEL', KEYS[2], uid)
  if redis.call('HGET', KEYS[3], f[1]) == uid then redis.call('HDEL', KEYS[3], f[1]) end
  redis.call('HDEL', KEYS[7], uid)
  if mode == 'remove' then redis.call('HSET', KEYS[6], uid, f[1]) end
  out = {'member', uid, f[1]}
elseif redis.call('ZREM', KEYS[4], uid) == 1 then
  local w = split_record(redis.call('HGET', KEYS[5], uid) or '')
  redis.call('HDEL', KEYS[5], uid)
  return {'waitlisted', uid, w[1] or ''}
else
  return {'none', uid, ''}
end
if m[2] == 'open' then
  local capacity = tonumber(m[3])
  while redis.call('HLEN', KEYS[2]) < capacity do
    local head = redis.call('ZPOPMIN', KEYS[4])
    if #head == 0 then break end
    local next_uid = head[1]
    local w = split_record(redis.call('HGET', KEYS[5], next_uid) or ('member' .. US .. 'patient' .. US .. '0'))
    redis.call('HDEL', KEYS[5], next_uid)
    local given = admit(KEYS[1], KEYS[2], KEYS[3], next_uid, w[1], w[2], w[3])
    out[#out + 1] = next_uid
    out[#out + 1] = given
    out[#out + 1] = w[2]
    out[#out + 1] = w[3]
  end
end
return out
