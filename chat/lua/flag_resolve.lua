-- flag_resolve.lua: a moderator resolves one flag; recorded in the audit log in the same step.
-- KEYS[1] open-flags zset  KEYS[2] the flag's hash  KEYS[3] its conversation's flag hash  KEYS[4] audit stream
-- ARGV[1] flag pub/sub channel  ARGV[2] the conversation's watch channel  ARGV[3] flag id
-- ARGV[4] conversation id (as read by the caller)  ARGV[5] moderator id  ARGV[6] resolution
-- ARGV[7] outcome: true_alarm | false_alarm | "" (not said); kept with the flag for retraining
-- ARGV[8..] the audit entry's fields (name, value, ...)
-- Publishes {"type":"flag_resolved",...} on ARGV[1]; when no unresolved flag is left in the conversation,
-- also {"type":"watch_ended",...} on ARGV[2] (moderators may no longer read it).
-- Returns JSON {resolved (false: it was resolved already), flag_id, conversation_id, resolved_by,
-- resolution, unresolved (flags of the conversation still open or acknowledged)}.
-- Refuses: not_found (no such flag, or it does not belong to ARGV[4]).
local fid, cid, by, resolution, outcome = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local h = redis.call('HMGET', KEYS[2], 'conversation_id', 'status', 'resolved_by', 'resolution', 'category')
if not h[1] or h[1] ~= cid then
  return redis.error_reply('AT:not_found:There is no such flag.')
end

local function unresolved()
  local n = 0
  for _, status in ipairs(redis.call('HVALS', KEYS[3])) do
    if status ~= 'resolved' then n = n + 1 end
  end
  return n
end

if h[2] == 'resolved' then
  return cjson.encode({resolved = false, flag_id = fid, conversation_id = cid, resolved_by = h[3],
                       resolution = h[4], unresolved = unresolved()})
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'status', 'resolved', 'resolved_by', by, 'resolution', resolution,
           'resolved_at', string.format('%d', now_ms), 'outcome', outcome)
redis.call('ZREM', KEYS[1], fid)
redis.call('HSET', KEYS[3], fid, 'resolved')
local audit = {}
for i = 8, #ARGV do audit[#audit + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], '*', unpack(audit))
local left = unresolved()
redis.call('PUBLISH', ARGV[1], cjson.encode({type = 'flag_resolved', flag_id = fid, conversation_id = cid,
                                             category = h[5], resolved_by = by, resolution = resolution,
                                             outcome = outcome, unresolved = left, ts = now_ms}))
if left == 0 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({type = 'watch_ended', conversation_id = cid,
                                               reason = 'flags_resolved'}))
end
return cjson.encode({resolved = true, flag_id = fid, conversation_id = cid, resolved_by = by,
                     resolution = resolution, outcome = outcome, unresolved = left})
