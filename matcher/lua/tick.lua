--! include lib.lua
-- Periodic housekeeping, run by every gateway about once a second; idempotent, so any number may run.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] batch size per kind of work
-- Expires offers (the next survivor gets the patient), drops requests whose owner stayed away past
-- the grace period, expires connections whose gateway stopped refreshing them, widens same-diagnosis
-- requests whose hold-out ended, and returns survivors whose cool-down ended (or whose daily cap
-- lifted at midnight) to the pool, and expires talk-later requests (later_expired).
-- Returns JSON {expired_offers, dropped, stale_conns, later_expired, offline?, created?}; offline: the users
-- whose last connection expired now (a gateway died), so their groups can be told they went offline.
local batch = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEY.offer_deadlines, '-inf', NOW, 'LIMIT', 0, batch)
for _, oid in ipairs(expired) do
  if not release_offer(oid, 'timeout') then redis.call('ZREM', KEY.offer_deadlines, oid) end
end
local stale = redis.call('ZRANGEBYSCORE', KEY.presence, '-inf', NOW, 'LIMIT', 0, batch)
local offline = {}
for _, member in ipairs(stale) do
  local bar = string.find(member, '|', 1, true)
  local uid = string.sub(member, 1, bar - 1)
  local conns = KEY.user_conns(uid)
  redis.call('SREM', conns, string.sub(member, bar + 1))
  redis.call('ZREM', KEY.presence, member)
  if redis.call('SCARD', conns) == 0 then
    offline[#offline + 1] = uid
    if redis.call('EXISTS', KEY.survivor(uid)) == 1 then reindex(uid); withdraw_offers(uid) end
    if redis.call('EXISTS', KEY.request(uid)) == 1 and redis.call('ZSCORE', KEY.away, uid) == false then
      redis.call('HSET', KEY.request(uid), 'away', NOW)
      redis.call('ZADD', KEY.away, NOW, uid)
      sync_ready(uid)
    end
  end
end
local gone = redis.call('ZRANGEBYSCORE', KEY.away, '-inf', NOW - tonumber(CFG.grace_s), 'LIMIT', 0, batch)
for _, pid in ipairs(gone) do
  if not drop_request(pid, 'grace_expired') then redis.call('ZREM', KEY.away, pid) end
end
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', KEY.relax, '-inf', NOW, 'LIMIT', 0, batch)) do
  redis.call('ZREM', KEY.relax, pid)
  try_match(pid)
end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEY.cooldowns, '-inf', NOW, 'LIMIT', 0, batch)) do
  redis.call('ZREM', KEY.cooldowns, sid)
  serve_survivor(sid)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEY.later_deadlines, '-inf', NOW, 'LIMIT', 0, batch)
for _, pid in ipairs(lapsed) do
  local lr = drop_later(pid)
  if lr then
    pub(pid, cjson.encode({type = 'later_expired', request_id = lr.id}))
    if not online(pid) then redis.call('HSET', KEY.later_expired, pid, lr.id) end   -- told in the next welcome
  else
    redis.call('ZREM', KEY.later_deadlines, pid)
  end
end
return result({expired_offers = #expired, dropped = #gone, stale_conns = #stale, later_expired = #lapsed,
               offline = #offline > 0 and offline or nil})
