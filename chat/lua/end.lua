-- end.lua: mark a conversation's log ended (terminal: no message is accepted afterwards).
-- KEYS[1] meta hash
-- ARGV[1] who ended it (user id, or a reason such as "timeout")
-- Returns 1 for the call that ended it; 0 if it had ended already or does not exist.
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended_at', string.format('%d', now_ms), 'ended_by', ARGV[1])
return 1
