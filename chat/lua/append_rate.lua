--! include append_bucket.lua
-- append_rate.lua (Redis Cluster only): take one token from the sender's send bucket before the append.
-- On a cluster the bucket (tag {u:<user>}) and the conversation (tag {c:<id>}) live in different slots, so
-- the bucket cannot join append.lua; the gateway calls this first, then append.lua.  A token is then spent
-- even when the append turns out to be a duplicate or is refused (ended, forbidden): slightly stricter
-- than the single-node path, never looser.
-- KEYS[1] the sender's send bucket   ARGV[1] tokens per second   ARGV[2] burst
-- Returns 1; refuses rate_limited (nothing written).
if not take_send_token(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), redis_now_ms()) then
  return redis.error_reply(RATE_LIMITED)
end
return 1
