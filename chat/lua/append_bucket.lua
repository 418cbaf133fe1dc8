-- append_bucket.lua: the sender's send-rate token bucket, shared by append.lua (single node: checked in
-- the same atomic step as the append) and append_rate.lua (Redis Cluster: its own call, in the user's slot).
-- The bucket is one string "<tokens> <ms of the last take, Redis clock>" (GET, then SET .. PX: the cheapest
-- read-modify-write Redis has; it runs on every message): `rate` tokens a second, at most `burst` saved up,
-- full when absent.  It is the same rule as gateway.limits.TokenBucket, kept in Redis so that every
-- connection of a user on every gateway, and every reconnect, draws on one bucket.
-- The key expires when the bucket would be full again, so an idle user costs no memory.
local function take_send_token(key, rate, burst, now)
  local tokens = burst
  local saved = redis.call('GET', key)
  if saved then
    local sep = string.find(saved, ' ', 1, true)
    local stamp = tonumber(string.sub(saved, sep + 1))
    tokens = tonumber(string.sub(saved, 1, sep - 1))
    if now > stamp then             -- a clock that went back (failover) refills nothing, takes nothing away
      tokens = math.min(burst, tokens + (now - stamp) * rate / 1000)
    end
  end
  if tokens < 1 then
    return false                    -- refused: nothing written, the refill keeps counting from the last take
  end
  tokens = tokens - 1
  redis.call('SET', key, string.format('%.6f %d', tokens, now), 'PX', math.ceil((burst - tokens) * 1000 / rate) + 1)
  return true
end

local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local RATE_LIMITED = 'AT:rate_limited:You are sending quickly; this message was not sent. Send it again in a moment.'
