--! keys
-- flag_ack.lua: a moderator started watching a conversation: its open flags become acknowledged.
-- KEYS[1] the conversation's flag hash (flag id -> status)
-- ARGV[1] control-plane key stem: flag hashes are KEY.flag(id) (same {ctl} slot as KEYS[1])
-- ARGV[2] flag pub/sub channel  ARGV[3] conversation id  ARGV[4] moderator id
-- Publishes {"type":"flag_acknowledged",...} per flag, so other moderators see someone is on it.
-- Returns how many flags were acknowledged (acknowledged and resolved ones are left as they are).
local channel, cid, by = ARGV[2], ARGV[3], ARGV[4]
local flat = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #flat, 2 do
  if flat[i + 1] == 'open' then
    local fid = flat[i]
    redis.call('HSET', KEY.flag(fid), 'status', 'acknowledged', 'acknowledged_by', by)
    redis.call('HSET', KEYS[1], fid, 'acknowledged')
    redis.call('PUBLISH', channel, cjson.encode({type = 'flag_acknowledged', flag_id = fid,
                                                 conversation_id = cid, acknowledged_by = by}))
    n = n + 1
  end
end
return n
