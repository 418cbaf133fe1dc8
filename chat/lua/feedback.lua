-- feedback.lua: store one participant's feedback on an ended conversation (a later call replaces it).
-- KEYS[1] meta hash
-- ARGV[1] user id  ARGV[2] rating (integer)  ARGV[3] comment
-- Fields written: <role>_rating, <role>_comment, <role>_feedback_at (ms), role = patient|survivor.
-- Refuses: forbidden (unknown conversation, not a participant, erased user);
--          bad_frame (the conversation is still open).
local uid = ARGV[1]
local m = redis.call('HMGET', KEYS[1], 'patient', 'survivor', 'state', 'erased:' .. uid)
local role
if m[1] and uid == m[1] then role = 'patient' elseif m[2] and uid == m[2] then role = 'survivor' end
if not role or m[4] then
  return redis.error_reply('AT:forbidden:You are not part of that conversation.')
end
if m[3] ~= 'ended' then
  return redis.error_reply('AT:bad_frame:conversation still open')
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], role .. '_rating', ARGV[2], role .. '_comment', ARGV[3],
           role .. '_feedback_at', string.format('%d', now_ms))
return 1
