--! include group_lib.lua
-- group_admin.lua: the facilitator tools that change one field: mute, pin, close, readmit.
-- KEYS[1] meta  KEYS[2] members  KEYS[3] names  KEYS[4] muted  KEYS[5] removed
-- ARGV[1] op: 'mute' | 'pin' | 'close' | 'readmit'  ARGV[2] actor id  ARGV[3] actor is a moderator (1|0)
-- ARGV[4] mute, readmit: the member's name; pin: the text ("" unpins)  ARGV[5] mute: minutes (0 lifts it);
--         pin: the name shown as who pinned it
-- Returns: mute {target id, until ms (0: lifted)}; pin {ts ms}; close {1 if it closed now, 0 if it was
--          closed}; readmit {the readmitted id}.
-- Refuses: not_found (no such group; an unknown name), forbidden (the actor may not lead this group; muting a
--          facilitator or oneself; readmit by anyone but a moderator), group_closed (mute or pin when closed).
local op, actor, is_mod = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[1], 'kind', 'state')
if m[1] ~= 'group' then
  return redis.error_reply('AT:not_found:There is no such group.')
end
if not may_lead(KEYS[2], actor, is_mod) or (op == 'readmit' and is_mod ~= '1') then
  return redis.error_reply('AT:forbidden:You are not part of that group.')
end
local now = group_now_ms()
if op == 'close' then
  if m[2] ~= 'open' then return {0} end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'ended_at', string.format('%d', now), 'ended_by', actor)
  return {1}
end
if op == 'readmit' then
  local found = redis.call('HGETALL', KEYS[5])
  for i = 1, #found, 2 do
    if found[i + 1] == ARGV[4] then
      redis.call('HDEL', KEYS[5], found[i])
      return {found[i]}
    end
  end
  return redis.error_reply('AT:not_found:Nobody of that name was removed from this group.')
end
if m[2] ~= 'open' then
  return redis.error_reply('AT:group_closed:This group has closed.')
end
if op == 'pin' then
  if ARGV[4] == '' then
    redis.call('HDEL', KEYS[1], 'pinned_text', 'pinned_by', 'pinned_ts')
  else
    redis.call('HSET', KEYS[1], 'pinned_text', ARGV[4], 'pinned_by', ARGV[5], 'pinned_ts', string.format('%d', now))
  end
  return {now}
end
-- mute
local target = redis.call('HGET', KEYS[3], ARGV[4])
if not target then
  return redis.error_reply('AT:not_found:Nobody of that name is in this group.')
end
local rec = split_record(redis.call('HGET', KEYS[2], target) or '')
if target == actor or rec[3] == '1' then
  return redis.error_reply('AT:forbidden:A facilitator cannot be muted, nor can you mute yourself.')
end
local minutes = tonumber(ARGV[5])
if minutes <= 0 then
  redis.call('HDEL', KEYS[4], target)
  return {target, 0}
end
local untilms = now + minutes * 60000
redis.call('HSET', KEYS[4], target, string.format('%d', untilms))
return {target, untilms}
