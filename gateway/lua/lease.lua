-- lease.lua: take or renew a connection lease under a cap, atomically, for every gateway at once.
-- KEYS[1] sorted set lease id -> expiry (ms, Redis clock): the live connections of one user or one address
-- ARGV[1] lease id   ARGV[2] cap (whole number; "" when renewing: no cap)   ARGV[3] time to live, ms
-- The rule (gateway.limits.admits): leases past their expiry no longer count (their gateway stopped
-- renewing them: it crashed or lost Redis) and are dropped; a lease already held is renewed; a new lease is
-- admitted while fewer than the cap are held.  A renewal re-adds a lease that had lapsed without looking at
-- the cap: its connection is open already.
-- Returns 1 when the lease is held (until now + ttl), 0 when refused (nothing written).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] ~= '' and not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then      -- the set lives as long as its latest lease, then goes
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
