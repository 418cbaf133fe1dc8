--! include lib.lua
-- A survivor sets their availability and profile.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] survivor id  ARGV[6] display name  ARGV[7] "1" available / "0" not  ARGV[8] max_chats
-- ARGV[9] "1" auto-accept  ARGV[10] diagnoses JSON list  ARGV[11] side effects JSON list  ARGV[12] languages JSON list
-- ARGV[13] when the asking session's token was issued (epoch s; "" = unknown)
-- Returns JSON {available, max_chats, auto_accept, active, pending, online, created?}.
-- Refuses: forbidden when the survivor was erased after that token was issued (nothing is written);
-- suspended (when asking to become available).
local sid, avail = ARGV[5], ARGV[7]
local key = KEY.survivor(sid)
if erased_session(sid, ARGV[13]) then return refuse('forbidden', 'This account was erased.') end
if avail == '1' and is_suspended(sid) then return refuse('suspended', 'Your account is suspended.') end
local old = hgetall(key)
if old then old.id = sid; unindex(old); unavail(old) end
redis.call('HSET', key, 'name', ARGV[6], 'av', avail, 'max', ARGV[8], 'auto', ARGV[9],
           'dx', ARGV[10], 'se', ARGV[11], 'lang', ARGV[12])
if not old then redis.call('HSET', key, 'act', 0, 'pend', 0, 'last', NOW, 'to', 0, 'idx', '0') end
if avail == '1' and (not old or old.av ~= '1') then
  redis.call('HSET', key, 'to', 0)
  if online(sid) then note_free(sid) end       -- a survivor became free (matcher/estimate.py)
end
if avail ~= '1' then withdraw_survivor_later(sid) end   -- talk-later cards stay only while available
serve_survivor(sid)
local sv = hgetall(key)
return result({available = sv.av == '1', max_chats = tonumber(sv.max), auto_accept = sv.auto == '1',
               active = tonumber(sv.act), pending = tonumber(sv.pend), online = online(sid),
               offered = sv.idx == '1'})
