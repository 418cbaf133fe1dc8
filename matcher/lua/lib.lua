-- Shared library of the matcher scripts (prepended to each by "--! include lib.lua").
-- Every matcher script has the same head:
--   KEYS[1]  the control-plane stats key: routes the call to the control-plane slot; every other
--            key a matcher script touches starts with the same stem and shares its hash tag {ctl}.
--   ARGV[1]  the control-plane key stem, e.g. "at:{ctl}:"
--   ARGV[2]  the user pub/sub channel stem, e.g. "at:u:"
--   ARGV[3]  a fresh random id from the caller: new offer / conversation ids are derived from it
--   ARGV[4]  config JSON: offer_timeout_s, grace_s, cooldown_s, daily_cap, ewma_default_s
--   ARGV[5..] the script's own arguments (named in its header)
-- Time is the server's (TIME), so gateways with skewed clocks agree.
local P = ARGV[1]
local CH = ARGV[2]
local SEED = ARGV[3]
local CFG = cjson.decode(ARGV[4])
local T = redis.call('TIME')
local NOW = tonumber(T[1]) + tonumber(T[2]) / 1e6
local DAY = tostring(math.floor(NOW / 86400))
local NSEQ = 0
local CREATED = {}

local function newid(kind)
  NSEQ = NSEQ + 1
  return kind .. SEED .. string.format('%02d', NSEQ)
end

local function refuse(code, message)
  return redis.error_reply('AT:' .. code .. ':' .. message)
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function jarr(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = cjson.encode(v) end
  return '[' .. table.concat(out, ',') .. ']'
end

-- encode a frame whose "shared" field is an already-encoded JSON object (keeps empty lists as [])
local function frame(t, shared_json)
  if shared_json then t.shared = '__SHARED__' end
  local s = cjson.encode(t)
  if shared_json then s = string.gsub(s, '"__SHARED__"', function() return shared_json end) end
  return s
end

local function pub(uid, payload)
  redis.call('PUBLISH', CH .. uid, payload)
end

local function is_suspended(uid)
  local untl = redis.call('HGET', P .. 'suspended', uid)
  if not untl then return false end
  untl = tonumber(untl)
  return untl == 0 or untl > NOW
end

local function online(uid)
  return redis.call('SCARD', P .. 'conns:' .. uid) > 0
end

local function set_has(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end

local function intersect(a, b)
  local out = {}
  for _, v in ipairs(a) do if set_has(b, v) then out[#out + 1] = v end end
  return out
end

-- ---------------------------------------------------------------- survivor index
-- A survivor is "indexed" (findable) iff available, online, under capacity, not cooling down,
-- under the daily cap and not suspended.  Index: ix:dx:<code>, ix:se:<code>, ix:lang:<code> sets
-- and ix:wait (zset by time of last match: smaller waited longer).
local function index_sets(sv, op)
  for _, kind in ipairs({'dx', 'se', 'lang'}) do
    for _, code in ipairs(cjson.decode(sv[kind] or '[]')) do
      redis.call(op, P .. 'ix:' .. kind .. ':' .. code, sv.id)
    end
  end
end

local function indexable(sv)
  if sv.av ~= '1' or not online(sv.id) then return false end
  if tonumber(sv.act) + tonumber(sv.pend) >= tonumber(sv.max) then return false end
  if tonumber(sv.cool or '0') > NOW then return false end
  if sv.day == DAY and tonumber(sv.today or '0') >= tonumber(CFG.daily_cap) then return false end
  return not is_suspended(sv.id)
end

local function unindex(sv)
  if sv.idx == '1' then
    index_sets(sv, 'SREM')
    redis.call('ZREM', P .. 'ix:wait', sv.id)
    redis.call('HSET', P .. 'sv:' .. sv.id, 'idx', '0')
    sv.idx = '0'
  end
end

-- bring the index in line with the survivor's state; returns the fresh record
local function reindex(sid)
  local sv = hgetall(P .. 'sv:' .. sid)
  if not sv then return nil end
  sv.id = sid
  local want = indexable(sv)
  if want and sv.idx ~= '1' then
    index_sets(sv, 'SADD')
    redis.call('ZADD', P .. 'ix:wait', tonumber(sv.last or '0'), sid)
    redis.call('HSET', P .. 'sv:' .. sid, 'idx', '1')
    sv.idx = '1'
  elseif not want then
    unindex(sv)
  end
  return sv
end

-- ---------------------------------------------------------------- eligibility
local function pair_ok(pid, rq, sid)
  if sid == pid then return false end
  if redis.call('SISMEMBER', P .. 'blocks:' .. pid, sid) == 1 then return false end
  if redis.call('SISMEMBER', P .. 'peers:' .. pid, sid) == 1 then return false end
  if redis.call('SISMEMBER', P .. 'rq:' .. pid .. ':no', sid) == 1 then return false end
  for _, l in ipairs(cjson.decode(rq.lang)) do
    if redis.call('SISMEMBER', P .. 'ix:lang:' .. l, sid) == 1 then return true end
  end
  return false
end

local function shared_json(rq, sv)
  return '{"diagnoses":' .. jarr(intersect(cjson.decode(rq.dx), cjson.decode(sv.dx))) ..
         ',"side_effects":' .. jarr(intersect(cjson.decode(rq.se), cjson.decode(sv.se))) .. '}'
end

-- Best indexed survivor for a waiting request: most shared diagnoses, then most shared side
-- effects (ZUNIONSTORE with weights 1000 and 1 does the counting in C), then longest wait.
local function best_survivor(pid, rq)
  local args = {P .. 'tmp', 0}
  local weights = {'WEIGHTS'}
  for _, d in ipairs(cjson.decode(rq.dx)) do args[#args + 1] = P .. 'ix:dx:' .. d; weights[#weights + 1] = 1000 end
  for _, s in ipairs(cjson.decode(rq.se)) do args[#args + 1] = P .. 'ix:se:' .. s; weights[#weights + 1] = 1 end
  args[2] = #args - 2
  if args[2] == 0 then return nil end
  for _, w in ipairs(weights) do args[#args + 1] = w end
  redis.call('ZUNIONSTORE', unpack(args))
  local minscore = 1
  if tonumber(rq.strict or '0') > NOW then minscore = 1000 end
  local best, best_score, best_last = nil, nil, nil
  local offset = 0
  while true do
    local batch = redis.call('ZREVRANGEBYSCORE', P .. 'tmp', '+inf', minscore, 'WITHSCORES', 'LIMIT', offset, 64)
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      local sid, score = batch[i], tonumber(batch[i + 1])
      if best_score and score < best_score then
        redis.call('DEL', P .. 'tmp')
        return best
      end
      if pair_ok(pid, rq, sid) then
        local last = tonumber(redis.call('ZSCORE', P .. 'ix:wait', sid) or '0')
        if not best or last < best_last then best, best_score, best_last = sid, score, last end
      end
    end
    offset = offset + 64
  end
  redis.call('DEL', P .. 'tmp')
  return best
end

-- Whether an indexed survivor suits a waiting request (the survivor-side view of best_survivor).
local function suits(pid, rq, sv)
  if not pair_ok(pid, rq, sv.id) then return false end
  local sdx = #intersect(cjson.decode(rq.dx), cjson.decode(sv.dx))
  if tonumber(rq.strict or '0') > NOW then return sdx > 0 end
  return sdx > 0 or #intersect(cjson.decode(rq.se), cjson.decode(sv.se)) > 0
end

-- ---------------------------------------------------------------- offers and matches
local serve_survivor, try_match

local function queued_frame(pid)
  local rank = redis.call('ZRANK', P .. 'queue', pid)
  if not rank then return nil end
  local ewma = tonumber(redis.call('HGET', P .. 'stats', 'wait_ewma') or CFG.ewma_default_s)
  return cjson.encode({type = 'queued', position = rank + 1,
                       estimated_wait_s = math.floor(ewma * (rank + 1) + 0.5)})
end

local function create_conversation(of, oid)
  local pid, sid = of.patient, of.survivor
  local rq = hgetall(P .. 'rq:' .. pid) or {}
  local sv = hgetall(P .. 'sv:' .. sid)
  local cid = newid('c')
  local epoch = newid('e')
  redis.call('HSET', P .. 'cv:' .. cid, 'patient', pid, 'survivor', sid, 'patient_name', of.pname,
             'survivor_name', sv.name, 'shared', of.shared, 'created', NOW, 'epoch', epoch, 'state', 'open')
  for _, uid in ipairs({pid, sid}) do
    redis.call('SADD', P .. 'convs:' .. uid, cid)
    redis.call('SADD', P .. 'hist:' .. uid, cid)
  end
  redis.call('SADD', P .. 'peers:' .. pid, sid)
  local today = 1
  if sv.day == DAY then today = tonumber(sv.today or '0') + 1 end
  redis.call('HSET', P .. 'sv:' .. sid, 'act', tonumber(sv.act) + 1, 'last', NOW, 'to', 0, 'day', DAY, 'today', today)
  local wait = NOW - tonumber(rq.created or NOW)
  local ewma = tonumber(redis.call('HGET', P .. 'stats', 'wait_ewma') or CFG.ewma_default_s)
  redis.call('HSET', P .. 'stats', 'wait_ewma', 0.8 * ewma + 0.2 * wait)
  redis.call('HINCRBY', P .. 'stats', 'matches', 1)
  redis.call('DEL', P .. 'rq:' .. pid, P .. 'rq:' .. pid .. ':no')
  redis.call('ZREM', P .. 'queue', pid)
  redis.call('ZREM', P .. 'relax', pid)
  redis.call('ZREM', P .. 'away', pid)
  reindex(sid)
  pub(pid, frame({type = 'matched', conversation_id = cid, epoch = epoch,
                  peer = {name = sv.name, role = 'survivor'}}, of.shared))
  pub(sid, frame({type = 'matched', conversation_id = cid, epoch = epoch,
                  peer = {name = of.pname, role = 'patient'}}, of.shared))
  CREATED[#CREATED + 1] = {id = cid, epoch = epoch, patient = pid, patient_name = of.pname,
                           survivor = sid, survivor_name = sv.name, wait_s = wait}
  return cid
end

-- remove an offer's bookkeeping; returns its record or nil
local function take_offer(oid)
  local of = hgetall(P .. 'of:' .. oid)
  if not of then return nil end
  redis.call('DEL', P .. 'of:' .. oid)
  redis.call('ZREM', P .. 'offer-deadlines', oid)
  redis.call('SREM', P .. 'sv:' .. of.survivor .. ':offers', oid)
  redis.call('HINCRBY', P .. 'sv:' .. of.survivor, 'pend', -1)
  return of
end

local function accept_offer(oid)
  local of = take_offer(oid)
  if not of then return nil end
  redis.call('HINCRBY', P .. 'stats', 'offers_accepted', 1)
  return create_conversation(of, oid)
end

local function make_offer(pid, rq, sid)
  local sv = hgetall(P .. 'sv:' .. sid)
  sv.id = sid
  local oid = newid('o')
  local shared = shared_json(rq, sv)
  local expires = NOW + tonumber(CFG.offer_timeout_s)
  redis.call('HSET', P .. 'of:' .. oid, 'patient', pid, 'survivor', sid, 'pname', rq.name,
             'shared', shared, 'expires', expires)
  redis.call('SADD', P .. 'sv:' .. sid .. ':offers', oid)
  redis.call('HINCRBY', P .. 'sv:' .. sid, 'pend', 1)
  redis.call('HSET', P .. 'rq:' .. pid, 'state', 'offered', 'offer', oid)
  redis.call('HINCRBY', P .. 'stats', 'offers_made', 1)
  if sv.auto == '1' then
    return accept_offer(oid)
  end
  redis.call('ZADD', P .. 'offer-deadlines', expires, oid)
  reindex(sid)
  pub(sid, frame({type = 'offer', offer_id = oid, patient = {name = rq.name},
                  expires_in_s = tonumber(CFG.offer_timeout_s)}, shared))
  return oid
end

-- an offer ends without a match: declined, timed out, withdrawn (survivor left) or cancelled (patient left)
local function release_offer(oid, outcome)
  local of = take_offer(oid)
  if not of then return nil end
  local pid, sid = of.patient, of.survivor
  redis.call('HINCRBY', P .. 'stats', 'offers_' .. outcome, 1)
  if outcome == 'timeout' then
    local streak = redis.call('HINCRBY', P .. 'sv:' .. sid, 'to', 1)
    pub(sid, cjson.encode({type = 'offer_expired', offer_id = oid}))
    if streak >= 2 then
      redis.call('HSET', P .. 'sv:' .. sid, 'av', '0', 'to', 0)
      pub(sid, cjson.encode({type = 'availability', available = false, reason = 'missed_offers',
                             message = 'Two offers in a row went unanswered, so you are now unavailable.'}))
    end
  elseif outcome == 'declined' then
    redis.call('HSET', P .. 'sv:' .. sid, 'to', 0)
  else
    pub(sid, cjson.encode({type = 'offer_withdrawn', offer_id = oid}))
  end
  if outcome ~= 'cancelled' and redis.call('EXISTS', P .. 'rq:' .. pid) == 1 then
    local rqkey = P .. 'rq:' .. pid
    redis.call('SADD', rqkey .. ':no', sid)
    redis.call('HSET', rqkey, 'state', 'waiting', 'offer', '')
    try_match(pid)
  end
  reindex(sid)
  serve_survivor(sid)
  return of
end

try_match = function(pid)
  local rq = hgetall(P .. 'rq:' .. pid)
  if not rq or rq.state ~= 'waiting' or tonumber(rq.away or '0') > 0 then return nil end
  local sid = best_survivor(pid, rq)
  if not sid then return nil end
  return make_offer(pid, rq, sid)
end

-- a survivor has a free slot: offer them to the oldest waiting patients they suit
serve_survivor = function(sid)
  local sv = reindex(sid)
  if not sv or sv.idx ~= '1' then return end
  local waiting = redis.call('ZRANGE', P .. 'queue', 0, 499)
  for _, pid in ipairs(waiting) do
    local rq = hgetall(P .. 'rq:' .. pid)
    if rq and rq.state == 'waiting' and tonumber(rq.away or '0') == 0 and suits(pid, rq, sv) then
      make_offer(pid, rq, sid)
      sv = hgetall(P .. 'sv:' .. sid)
      sv.id = sid
      if sv.idx ~= '1' then return end
    end
  end
end

-- withdraw every pending offer a survivor holds (left, suspended)
local function withdraw_offers(sid)
  for _, oid in ipairs(redis.call('SMEMBERS', P .. 'sv:' .. sid .. ':offers')) do
    release_offer(oid, 'withdrawn')
  end
end

local function drop_request(pid, why)
  local rq = hgetall(P .. 'rq:' .. pid)
  if not rq then return false end
  if rq.state == 'offered' and rq.offer ~= '' then release_offer(rq.offer, 'cancelled') end
  redis.call('DEL', P .. 'rq:' .. pid, P .. 'rq:' .. pid .. ':no')
  redis.call('ZREM', P .. 'queue', pid)
  redis.call('ZREM', P .. 'relax', pid)
  redis.call('ZREM', P .. 'away', pid)
  pub(pid, cjson.encode({type = 'cancelled', reason = why}))
  return true
end

local function result(t)
  t.created = CREATED
  if #CREATED == 0 then t.created = nil end
  return cjson.encode(t)
end
