--! include lib.lua
-- Periodic housekeeping, run by every gateway about once a second; idempotent, so any number may run.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] batch size per kind of work
-- Expires offers (the next survivor gets the patient), drops requests whose owner stayed away past
-- the grace period, expires connections whose gateway stopped refreshing them, widens same-diagnosis
-- requests whose hold-out ended, and returns survivors whose cool-down ended to the pool.
-- Returns JSON {expired_offers, dropped, stale_conns, created?}.
local batch = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', P .. 'offer-deadlines', '-inf', NOW, 'LIMIT', 0, batch)
for _, oid in ipairs(expired) do
  if not release_offer(oid, 'timeout') then redis.call('ZREM', P .. 'offer-deadlines', oid) end
end
local stale = redis.call('ZRANGEBYSCORE', P .. 'presence', '-inf', NOW, 'LIMIT', 0, batch)
for _, member in ipairs(stale) do
  local bar = string.find(member, '|', 1, true)
  local uid = string.sub(member, 1, bar - 1)
  local conns = P .. 'conns:' .. uid
  redis.call('SREM', conns, string.sub(member, bar + 1))
  redis.call('ZREM', P .. 'presence', member)
  if redis.call('SCARD', conns) == 0 then
    if redis.call('EXISTS', P .. 'sv:' .. uid) == 1 then reindex(uid); withdraw_offers(uid) end
    if redis.call('EXISTS', P .. 'rq:' .. uid) == 1 and redis.call('ZSCORE', P .. 'away', uid) == false then
      redis.call('HSET', P .. 'rq:' .. uid, 'away', NOW)
      redis.call('ZADD', P .. 'away', NOW, uid)
    end
  end
end
local gone = redis.call('ZRANGEBYSCORE', P .. 'away', '-inf', NOW - tonumber(CFG.grace_s), 'LIMIT', 0, batch)
for _, pid in ipairs(gone) do
  if not drop_request(pid, 'grace_expired') then redis.call('ZREM', P .. 'away', pid) end
end
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'relax', '-inf', NOW, 'LIMIT', 0, batch)) do
  redis.call('ZREM', P .. 'relax', pid)
  try_match(pid)
end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'cooldowns', '-inf', NOW, 'LIMIT', 0, batch)) do
  redis.call('ZREM', P .. 'cooldowns', sid)
  serve_survivor(sid)
end
return result({expired_offers = #expired, dropped = #gone, stale_conns = #stale})
