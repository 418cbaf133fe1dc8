--! include group_lib.lua
-- group_open.lua: create a group (a conversation of kind 'group') with its creator as its first member
-- (a facilitator; a moderator who creates one leads it from outside and is not a member: ARGV[9] "").
-- KEYS[1] meta hash  KEYS[2] members hash  KEYS[3] names hash   (all of the group's {c:ID} slot)
-- ARGV[1] epoch  ARGV[2] title  ARGV[3] description  ARGV[4] topic kind  ARGV[5] topic code  ARGV[6] language
-- ARGV[7] capacity  ARGV[8] schedule (JSON, or "")  ARGV[9] creator id  ARGV[10] creator name
-- ARGV[11] creator role  ARGV[12] creator is a facilitator (1|0)
-- Returns the creation time (ms, Redis clock).  Refuses: forbidden if the id is taken (ids are random).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('AT:forbidden:That group id is taken.')
end
local now = group_now_ms()
redis.call('HSET', KEYS[1], 'kind', 'group', 'epoch', ARGV[1], 'seq', 0, 'state', 'open',
           'created', string.format('%d', now), 'ended_at', '', 'ended_by', '', 'patient', '', 'survivor', '',
           'title', ARGV[2], 'description', ARGV[3], 'topic_kind', ARGV[4], 'topic_code', ARGV[5],
           'language', ARGV[6], 'capacity', ARGV[7], 'schedule', ARGV[8], 'creator', ARGV[9], 'wl_ticket', 0)
if ARGV[9] ~= '' then admit(KEYS[1], KEYS[2], KEYS[3], ARGV[9], ARGV[10], ARGV[11], ARGV[12]) end
return now
