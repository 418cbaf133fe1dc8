-- open.lua: create a conversation's log metadata once; a second call changes nothing.
-- KEYS[1] meta hash of the conversation ({c:ID}:meta)
-- ARGV[1] epoch  ARGV[2] patient id  ARGV[3] patient name  ARGV[4] survivor id  ARGV[5] survivor name
-- Returns 1 if it created the conversation, 0 if it existed already (epoch/seq/state untouched).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0,
           'patient', ARGV[2], 'patient_name', ARGV[3], 'survivor', ARGV[4], 'survivor_name', ARGV[5],
           'state', 'open', 'created', string.format('%d', now_ms), 'ended_at', '', 'ended_by', '')
return 1
