--! include lib.lua
-- A connection of a user appears or goes away.  Availability is tied to live connections.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] "connect" | "disconnect"  ARGV[6] user id  ARGV[7] connection id  ARGV[8] presence TTL (s)
-- Returns JSON {online: bool, created?}.
local op, uid, conn = ARGV[5], ARGV[6], ARGV[7]
local conns = KEY.user_conns(uid)
if op == 'connect' then
  local first = redis.call('SCARD', conns) == 0
  redis.call('SADD', conns, conn)
  redis.call('ZADD', KEY.presence, NOW + tonumber(ARGV[8]), uid .. '|' .. conn)
  local rq = hgetall(KEY.request(uid))
  if rq and tonumber(rq.away or '0') > 0 then
    redis.call('HSET', KEY.request(uid), 'away', 0)
    redis.call('ZREM', KEY.away, uid)
    sync_ready(uid)
    try_match(uid)
  end
  if first and redis.call('EXISTS', KEY.survivor(uid)) == 1 then
    note_free(uid)                                  -- only counts when they are available
    serve_survivor(uid)
  end
else
  redis.call('SREM', conns, conn)
  redis.call('ZREM', KEY.presence, uid .. '|' .. conn)
  if redis.call('SCARD', conns) == 0 then
    if redis.call('EXISTS', KEY.survivor(uid)) == 1 then
      reindex(uid)
      withdraw_offers(uid)
    end
    if redis.call('EXISTS', KEY.request(uid)) == 1 then
      redis.call('HSET', KEY.request(uid), 'away', NOW)
      redis.call('ZADD', KEY.away, NOW, uid)
      sync_ready(uid)
    end
  end
end
return result({online = online(uid)})
