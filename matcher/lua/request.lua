--! include lib.lua
-- A patient presses "talk now"; a second request from another tab joins the first.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] patient id  ARGV[6] display name  ARGV[7] diagnoses JSON  ARGV[8] side effects JSON
-- ARGV[9] languages JSON  ARGV[10] prefer_same_diagnosis_s (0 = offer the best peer at once)
-- ARGV[11] max requests per patient per hour
-- ARGV[12] optional JSON list of the conversation ids the asking connection already knows
-- ARGV[13] when the asking session's token was issued (epoch s; "" = unknown)
-- Returns JSON {state: "queued"|"offered"|"matched", joined: bool, created?}.
-- Refuses: forbidden when the patient was erased after that token was issued; suspended; rate_limited (too many requests this hour); already_matched when the patient
-- has an open conversation the asking connection has not heard of yet: a second tab pressed
-- talk-now while the first tab's request was being matched, so it joins that match (its
-- "matched" frame is on the way) instead of starting a second request.  A match younger than
-- CFG.rejoin_window_s is joined even when the asking connection was already sent it: that press
-- crossed the "matched" frame on the wire (the gateway's "sent" is not the client's "seen").
local pid = ARGV[5]
local key = KEY.request(pid)
if erased_session(pid, ARGV[13]) then return refuse('forbidden', 'This account was erased.') end
if is_suspended(pid) then return refuse('suspended', 'Your account is suspended.') end
local existing = hgetall(key)
if existing then
  local f = queued_frame(pid, true)
  if f then pub(pid, f) end
  return result({state = existing.state, joined = true})
end
if ARGV[12] and ARGV[12] ~= '' then
  local known = cjson.decode(ARGV[12])
  local window = tonumber(CFG.rejoin_window_s)
  for _, cid in ipairs(redis.call('SMEMBERS', KEY.user_convs(pid))) do
    -- only a conversation this user has as the patient is a match of a talk-now (one account may
    -- also be a survivor)
    local c = redis.call('HMGET', KEY.conversation(cid), 'patient', 'created')
    if c[1] == pid and (not set_has(known, cid) or NOW - tonumber(c[2] or 0) < window) then
      return refuse('already_matched', 'Your request was just matched; your conversation is opening.')
    end
  end
end
if over_hourly_cap(pid, ARGV[11]) then
  return refuse('rate_limited', 'Too many talk-now requests this hour; please wait a little.')
end
local strict_until = 0
if tonumber(ARGV[10]) > 0 then strict_until = NOW + tonumber(ARGV[10]) end
redis.call('HSET', key, 'name', ARGV[6], 'dx', ARGV[7], 'se', ARGV[8], 'lang', ARGV[9],
           'created', NOW, 'state', 'waiting', 'offer', '', 'strict', strict_until, 'away', 0)
redis.call('ZADD', KEY.queue, NOW, pid)
if strict_until > 0 then redis.call('ZADD', KEY.relax, strict_until, pid) end
redis.call('HINCRBY', KEY.stats, 'requests', 1)
hold_later(pid)          -- a live talk-now request takes precedence over the patient's talk-later one
sync_ready(pid)
try_match(pid)
local after = hgetall(key)
if not after then return result({state = 'matched', joined = false}) end
local f = queued_frame(pid)
if f then pub(pid, f) end
return result({state = after.state, joined = false})
