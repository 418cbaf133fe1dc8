--! include append_bucket.lua
-- append.lua: store one chat message and wake its readers, in one atomic step.
-- KEYS[1] meta hash  KEYS[2] log stream  KEYS[3] client-id hash  KEYS[4] group members  KEYS[5] group mutes
--         (all of one {c:ID} slot; the last two are read only for a group: kind 'group' in the meta hash)
-- KEYS[6] (single node only, when ARGV[13] is given) the sender's send bucket (append_bucket.lua): a new
--         message takes a token in the same step, or is refused rate_limited and nothing is stored.  On
--         a cluster the bucket is in the user's slot and the caller takes the token first (append_rate.lua).
-- KEYS[6], or KEYS[7] after a bucket (optional, single node only) the screening stream: a new message from
--         a participant is queued there in the same step ({c: <id>, s: <seq>}), so no stored message escapes
--         screening.  On a cluster it lives in another slot and the caller queues it right after this script.
-- ARGV[1] conversation id  ARGV[2] sender id  ARGV[3] sender display name
-- ARGV[4] role (patient|survivor|moderator)  ARGV[5] client id  ARGV[6] text (original)
-- ARGV[7] shown text ("" or equal to ARGV[6]: not masked)  ARGV[8] flags (comma separated, may be "")
-- ARGV[9] user channel stem (channel = stem .. user id)  ARGV[10] the conversation's watch channel
-- ARGV[11], ARGV[12] (optional, Redis Cluster): the conversation's live and watch shard channels; when
--          given, the wake-ups are SPUBLISHed once to each instead of PUBLISHed to the three plain channels
-- ARGV[13], ARGV[14] (optional, single node only): the send bucket's tokens per second and burst (KEYS[6])
-- A group (issue 12): the sender must be a member (or a moderator) and is named by their name in the group;
-- a muted member is refused 'muted' with the seconds left; the wake-up goes to every member's user channel.
-- Returns {seq, ts_ms, epoch, duplicate (0|1)}.  A duplicate (same sender, same client id) returns the
-- recorded seq/ts and stores and publishes nothing.
-- Refuses: forbidden (unknown conversation, not a participant and not a moderator, or an erased sender);
--          muted (a group member muted by a facilitator: the message is "AT:muted:<seconds left>");
--          conversation_ended (state is not open; moderators too; checked after the duplicate test so a
--          retry of a message stored before the end is still acknowledged); rate_limited (the sender's
--          bucket is empty; checked last, so a retry, a refusal or a non-participant costs no token).
local cid, sender, name, role, client = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local text, shown, flags = ARGV[6], ARGV[7], ARGV[8]
local limited = ARGV[13] ~= nil and ARGV[13] ~= ''
local screen_queue = KEYS[6]
if limited then screen_queue = KEYS[7] end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'state', 'patient', 'survivor', 'erased:' .. sender, 'kind')
local epoch, state, patient, survivor, erased = m[1], m[2], m[3], m[4], m[5]
local group = m[6] == 'group'
local member = false
if group then
  member = redis.call('HGET', KEYS[4], sender)
  if member then name = string.sub(member, 1, string.find(member, '\31', 1, true) - 1) end
end
if not epoch or erased or (sender ~= patient and sender ~= survivor and not member and role ~= 'moderator') then
  return redis.error_reply('AT:forbidden:You are not part of that conversation.')
end
-- client ids are scoped by sender (length-prefixed, so no two (sender, client id) pairs collide)
local field = string.len(sender) .. ':' .. sender .. ':' .. client
local prior = redis.call('HGET', KEYS[3], field)
if prior then
  local sep = string.find(prior, ':', 1, true)
  return {tonumber(string.sub(prior, 1, sep - 1)), tonumber(string.sub(prior, sep + 1)), epoch, 1}
end
if state ~= 'open' then
  return redis.error_reply('AT:conversation_ended:This conversation has ended.')
end
local ts = redis_now_ms()
if member then
  local muted = tonumber(redis.call('HGET', KEYS[5], sender) or '0')
  if muted > ts then
    return redis.error_reply(string.format('AT:muted:%d', math.ceil((muted - ts) / 1000)))
  end
end
if limited and not take_send_token(KEYS[6], tonumber(ARGV[13]), tonumber(ARGV[14]), ts) then
  return redis.error_reply(RATE_LIMITED)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local ts_s = string.format('%d', ts)
local id = string.format('%d-1', seq)
if shown == '' or shown == text then
  shown = text
  redis.call('XADD', KEYS[2], id, 'from', sender, 'name', name, 'role', role, 'text', text,
             'cid', client, 'ts', ts_s, 'flags', flags)
else
  redis.call('XADD', KEYS[2], id, 'from', sender, 'name', name, 'role', role, 'text', text,
             'shown', shown, 'cid', client, 'ts', ts_s, 'flags', flags)
end
redis.call('HSET', KEYS[3], field, string.format('%d:%d', seq, ts))
if screen_queue and role ~= 'moderator' then
  redis.call('XADD', screen_queue, '*', 'c', cid, 's', seq)
end
local live = cmsgpack.pack({'m', cid, seq, epoch, ts, name, role, shown, client, sender})
local watch = cmsgpack.pack({'m', cid, seq, epoch, ts, name, role, text, client, sender, flags})
if ARGV[11] and ARGV[11] ~= '' then
  redis.call('SPUBLISH', ARGV[11], live)
  redis.call('SPUBLISH', ARGV[12], watch)
elseif group then
  for _, uid in ipairs(redis.call('HKEYS', KEYS[4])) do
    redis.call('PUBLISH', ARGV[9] .. uid, live)
  end
  redis.call('PUBLISH', ARGV[10], watch)
else
  redis.call('PUBLISH', ARGV[9] .. patient, live)
  redis.call('PUBLISH', ARGV[9] .. survivor, live)
  redis.call('PUBLISH', ARGV[10], watch)
end
return {seq, ts, epoch, 0}
