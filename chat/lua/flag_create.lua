--! keys
-- flag_create.lua: record the flags raised on one message (or one report), rank them, announce them.
-- KEYS[1] open-flags zset (flag id -> rank score)  KEYS[2] the conversation's flag hash (flag id -> status)
-- ARGV[1] control-plane key stem: flag hashes are KEY.flag(id) (same {ctl} slot as KEYS)
-- ARGV[2] flag pub/sub channel  ARGV[3] conversation id  ARGV[4] seq the flags point to
-- ARGV[5] excerpt  ARGV[6] categories that put a conversation under priority review (comma separated)
-- ARGV[7] author of the flagged message ("" for reports; erasure blanks the excerpts of an author)
-- ARGV[8] reporting user id ("" for automatic flags)  ARGV[9] report reason ("" for automatic flags)
-- ARGV[10] source: rules | model | report
-- ARGV[11..] quadruples: flag id, category, severity (low|medium|high), score ("" unless the model's, 0..1)
-- A flag id that exists already is skipped, so a retried message raises its flags once.
-- Rank score: band * 1e13 + created ms, ascending = first to review.  band = 0..2 for a conversation
-- under priority review (it has an unresolved flag of a priority category), 3..5 otherwise; within
-- each, high < medium < low.  When a conversation becomes priority, its unresolved flags move up.
-- Returns the JSON list of the created flags' frames, as published on ARGV[2]; a flag of a group (its id
-- starts with "g-") says "group": true.
local zset, conv = KEYS[1], KEYS[2]
local channel, cid, seq, excerpt = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local author, reporter, reason, source = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local RANK = {high = 0, medium = 1, low = 2}

local priority_cats = {}
for c in string.gmatch(ARGV[6], '[^,]+') do priority_cats[c] = true end

local function score(priority, severity, created)
  local band = (RANK[severity] or 1) + (priority and 0 or 3)
  return band * 1e13 + created
end

-- is the conversation under priority review already?  (flags of one conversation are few)
local priority, unresolved = false, {}
local flat = redis.call('HGETALL', conv)
for i = 1, #flat, 2 do
  if flat[i + 1] ~= 'resolved' then
    unresolved[#unresolved + 1] = flat[i]
    if redis.call('HGET', KEY.flag(flat[i]), 'priority') == '1' then priority = true end
  end
end

local new = {}
for i = 11, #ARGV, 4 do
  local fid, category, severity, fscore = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('EXISTS', KEY.flag(fid)) == 0 then
    new[#new + 1] = {fid, category, severity, fscore}
  end
end
if #new == 0 then return '[]' end

if not priority then
  for _, f in ipairs(new) do
    if priority_cats[f[2]] then priority = true end
  end
  if priority then     -- the conversation just became priority: move its open flags up
    for _, fid in ipairs(unresolved) do
      local key = KEY.flag(fid)
      local h = redis.call('HMGET', key, 'severity', 'created')
      redis.call('HSET', key, 'priority', '1')
      redis.call('ZADD', zset, score(true, h[1], tonumber(h[2])), fid)
    end
  end
end

local out = {}
for _, f in ipairs(new) do
  local fid, category, severity, fscore = f[1], f[2], f[3], f[4]
  redis.call('HSET', KEY.flag(fid), 'flag_id', fid, 'conversation_id', cid, 'seq', ARGV[4],
             'category', category, 'severity', severity, 'status', 'open', 'excerpt', excerpt,
             'created', string.format('%d', now_ms), 'resolved_by', '', 'resolution', '',
             'priority', priority and '1' or '0', 'author', author, 'reported_by', reporter, 'reason', reason,
             'source', source, 'score', fscore)
  redis.call('HSET', conv, fid, 'open')
  redis.call('ZADD', zset, score(priority, severity, now_ms), fid)
  local frame = {type = 'flag', flag_id = fid, conversation_id = cid, category = category,
                 severity = severity, seq = seq, excerpt = excerpt, ts = now_ms, status = 'open',
                 priority = priority, source = source}
  if fscore ~= '' then frame.score = tonumber(fscore) end
  if string.sub(cid, 1, 2) == 'g-' then frame.group = true end     -- a group's id (chat/groups.py GROUP_ID_PREFIX)
  if reporter ~= '' then
    frame.reported_by = reporter
    frame.reason = reason
  end
  local json = cjson.encode(frame)
  redis.call('PUBLISH', channel, json)
  out[#out + 1] = json
end
return '[' .. table.concat(out, ',') .. ']'
