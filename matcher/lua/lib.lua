--! keys
-- Shared library of the matcher scripts (prepended to each by "--! include lib.lua").
-- Every matcher script has the same head:
--   KEYS[1]  the control-plane stats key: routes the call to the control-plane slot; every other
--            key a matcher script touches starts with the same stem and shares its hash tag {ctl}.
--   ARGV[1]  the control-plane key stem, e.g. "at:{ctl}:"; the table KEY ("--! keys", generated
--            from core/keys.py) builds every key name on it: KEY.queue, KEY.survivor(uid), ...
--   ARGV[2]  the user pub/sub channel stem, e.g. "at:u:"
--   ARGV[3]  a fresh random id from the caller: new offer / conversation ids are derived from it
--   ARGV[4]  config JSON: offer_timeout_s, grace_s, cooldown_s, daily_cap, ewma_default_s,
--            rejoin_window_s, free_half_life_s
--   ARGV[5..] the script's own arguments (named in its header)
-- Time is the server's (TIME), so gateways with skewed clocks agree.
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
  local untl = redis.call('HGET', KEY.suspended, uid)
  if not untl then return false end
  untl = tonumber(untl)
  return untl == 0 or untl > NOW
end

-- erased and signed in with a token issued no later than the erasure (iat "" = unknown: as old)
-- One more request this hour for the patient (talk-now, talk-later and talk-again share the count);
-- true when that is over ``cap``.  The counter lives 3,700 s.
local function over_hourly_cap(pid, cap)
  local hour = KEY.request_count(pid, math.floor(NOW / 3600))
  local n = redis.call('INCR', hour)
  redis.call('EXPIRE', hour, 3700)
  return n > tonumber(cap)
end

local function erased_session(uid, iat)
  if redis.call('SISMEMBER', KEY.erased_before_tombstones, uid) == 1 then return true end
  local at = redis.call('HGET', KEY.erasures, uid)
  if not at then return false end
  iat = tonumber(iat)
  return iat == nil or iat <= tonumber(at)
end

local function online(uid)
  return redis.call('SCARD', KEY.user_conns(uid)) > 0
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
-- under the daily cap and not suspended.  Index (sorted sets scored by rank_score):
-- KEY.rank_dx(code), KEY.rank_se(code), and KEY.rank_pair(dx, se) for each pair of the survivor's
-- diagnoses and side effects; KEY.lang_index(code) sets; KEY.wait_index (zset by time of last
-- match: smaller waited longer).
--
-- rank_score folds the wait into the topic indexes: 1 + a bonus that shrinks as the time of the
-- last match grows, (2^33 - last) * 2^-47 < 2^-14.  A ZUNIONSTORE of such sets with integer
-- weights scores a survivor c * (1 + bonus), c the weighted count of sets they are in; with
-- c <= 12012 < 2^14 (profiles hold at most 12 codes a list) the bonus never lifts anyone into
-- the next count, so a union read from the top is in ranking order (count, then longest wait, to
-- ~0.1 s; first_eligible settles closer ties exactly).
local function rank_score(last)
  return 1 + (8589934592 - tonumber(last or '0')) * 7.105427357601002e-15
end

local function index_sets(sv, op)
  local add, score, id = op == 'SADD', rank_score(sv.last), sv.id
  local function z(key)
    if add then redis.call('ZADD', key, score, id) else redis.call('ZREM', key, id) end
  end
  local dx, se = cjson.decode(sv.dx or '[]'), cjson.decode(sv.se or '[]')
  for _, d in ipairs(dx) do
    z(KEY.rank_dx(d))
    for _, e in ipairs(se) do z(KEY.rank_pair(d, e)) end
  end
  for _, e in ipairs(se) do z(KEY.rank_se(e)) end
  for _, code in ipairs(cjson.decode(sv.lang or '[]')) do
    redis.call(op, KEY.lang_index(code), id)
  end
end

-- ---------------------------------------------------------------- availability index (honest waits)
-- A survivor is in KEY.avail_dx / avail_se / avail_lang while available, online and not suspended,
-- busy or not (sv.aix says so): queued frames count who fits a request now, free or in a conversation.
local function avail_sets(sv, op)
  for _, d in ipairs(cjson.decode(sv.dx or '[]')) do redis.call(op, KEY.avail_dx(d), sv.id) end
  for _, e in ipairs(cjson.decode(sv.se or '[]')) do redis.call(op, KEY.avail_se(e), sv.id) end
  for _, l in ipairs(cjson.decode(sv.lang or '[]')) do redis.call(op, KEY.avail_lang(l), sv.id) end
end

local function unavail(sv)
  if sv.aix == '1' then
    avail_sets(sv, 'SREM')
    redis.call('HSET', KEY.survivor(sv.id), 'aix', '0')
    sv.aix = '0'
  end
end

local function sync_avail(sv)
  local want = sv.av == '1' and online(sv.id) and not is_suspended(sv.id)
  if want and sv.aix ~= '1' then
    avail_sets(sv, 'SADD')
    redis.call('HSET', KEY.survivor(sv.id), 'aix', '1')
    sv.aix = '1'
  elseif not want then
    unavail(sv)
  end
end

-- A survivor became free (switched available, came online available, or a conversation of theirs
-- ended): one more event in the decayed count of each topic class and language of theirs
-- (KEY.free_rates "dx=CODE|LANG" -> "count|at|since"; matcher/estimate.py reads it).
local function note_free(sid)
  local sv = hgetall(KEY.survivor(sid))
  if not sv or sv.av ~= '1' or not online(sid) then return end
  local half = tonumber(CFG.free_half_life_s or 3600)
  local topics = {}
  for _, d in ipairs(cjson.decode(sv.dx or '[]')) do topics[#topics + 1] = 'dx=' .. d end
  for _, e in ipairs(cjson.decode(sv.se or '[]')) do topics[#topics + 1] = 'se=' .. e end
  for _, t in ipairs(topics) do
    for _, l in ipairs(cjson.decode(sv.lang or '[]')) do
      local field = t .. '|' .. l
      local count, since = 0, NOW
      local raw = redis.call('HGET', KEY.free_rates, field)
      if raw then
        local c, at, s = string.match(raw, '^([^|]+)|([^|]+)|([^|]+)$')
        if c then
          count = tonumber(c) * 2 ^ (-(NOW - tonumber(at)) / half)
          since = tonumber(s)
        end
      end
      redis.call('HSET', KEY.free_rates, field, string.format('%.6f|%.6f|%.6f', count + 1, NOW, since))
    end
  end
end

-- conversations the survivor began today (the counter is for the day in sv.day; a new day starts at 0)
local function today_count(sv)
  if sv.day == DAY then return tonumber(sv.today or '0') end
  return 0
end

local function indexable(sv)
  if sv.av ~= '1' or not online(sv.id) then return false end
  if tonumber(sv.act) + tonumber(sv.pend) >= tonumber(sv.max) then return false end
  if tonumber(sv.cool or '0') > NOW then return false end
  if today_count(sv) >= tonumber(CFG.daily_cap) then return false end
  return not is_suspended(sv.id)
end

local function unindex(sv)
  if sv.idx == '1' then
    index_sets(sv, 'SREM')
    redis.call('ZREM', KEY.wait_index, sv.id)
    redis.call('HSET', KEY.survivor(sv.id), 'idx', '0')
    sv.idx = '0'
  end
end

-- bring the index in line with the survivor's state; returns the fresh record
local function reindex(sid)
  local sv = hgetall(KEY.survivor(sid))
  if not sv then return nil end
  sv.id = sid
  sync_avail(sv)
  local want = indexable(sv)
  if want and sv.idx ~= '1' then
    index_sets(sv, 'SADD')
    redis.call('ZADD', KEY.wait_index, tonumber(sv.last or '0'), sid)
    redis.call('HSET', KEY.survivor(sid), 'idx', '1')
    sv.idx = '1'
  elseif not want then
    unindex(sv)
  end
  return sv
end

-- ---------------------------------------------------------------- eligibility
local function pair_ok(pid, rq, sid)
  if sid == pid then return false end
  if redis.call('SISMEMBER', KEY.blocks(pid), sid) == 1 then return false end
  if redis.call('SISMEMBER', KEY.peers(pid), sid) == 1 then return false end
  if redis.call('SISMEMBER', KEY.request_declined(pid), sid) == 1 then return false end
  for _, l in ipairs(cjson.decode(rq.lang)) do
    if redis.call('SISMEMBER', KEY.lang_index(l), sid) == 1 then return true end
  end
  return false
end

local function shared_json(rq, sv)
  return '{"diagnoses":' .. jarr(intersect(cjson.decode(rq.dx), cjson.decode(sv.dx))) ..
         ',"side_effects":' .. jarr(intersect(cjson.decode(rq.se), cjson.decode(sv.se))) .. '}'
end

-- The first eligible survivor of a ranked sorted set (see rank_score), read from the top; those
-- whose wait is within 1 s of that one's (below rank_score's resolution) are compared on their
-- exact time of last match.  Returns sid, last (or nil).
local function first_eligible(pid, rq, key, minscore)
  local best, best_last, floor = nil, nil, nil
  local offset = 0
  while true do
    local batch = redis.call('ZREVRANGEBYSCORE', key, '+inf', minscore, 'WITHSCORES', 'LIMIT', offset, 32)
    for i = 1, #batch, 2 do
      local sid, score = batch[i], tonumber(batch[i + 1])
      if floor and score < floor then return best, best_last end
      if pair_ok(pid, rq, sid) then
        local last = tonumber(redis.call('ZSCORE', KEY.wait_index, sid) or '0')
        if not best then
          best, best_last = sid, last
          floor = score - math.floor(score) * 7.105427357601002e-15     -- 1 s of rank_score bonus
        elseif last < best_last then
          best, best_last = sid, last
        end
      end
    end
    if #batch < 64 then return best, best_last end      -- 32 members with their scores
    offset = offset + 32
  end
end

-- Keep only speakers of the request's languages in the ranked set ``key`` (a scratch key) when
-- they are fewer than its members, so the read never walks past many survivors the patient
-- cannot talk to.  Returns the key to read.
local function narrow(rq, key, size, scratch)
  local langs = cjson.decode(rq.lang)
  local speakers = 0
  for _, l in ipairs(langs) do speakers = speakers + redis.call('SCARD', KEY.lang_index(l)) end
  if speakers >= size then return key end
  local lang_key = KEY.lang_index(langs[1])
  if #langs > 1 then
    lang_key = KEY.scratch_langs
    local sets = {}
    for i, l in ipairs(langs) do sets[i] = KEY.lang_index(l) end
    redis.call('SUNIONSTORE', lang_key, unpack(sets))
  end
  redis.call('ZINTERSTORE', scratch, 2, key, lang_key, 'WEIGHTS', 1, 0)
  if #langs > 1 then redis.call('DEL', lang_key) end
  return scratch
end

-- The best eligible survivor in the union of ranked sets keys[i] (weights[i]) with a score of at
-- least minscore.  Returns sid, last (or nil).
local function ranked_union(pid, rq, keys, weights, minscore)
  if #keys == 0 then return nil end
  local tmp = KEY.scratch
  local args = {tmp, #keys}
  for _, k in ipairs(keys) do args[#args + 1] = k end
  args[#args + 1] = 'WEIGHTS'
  for _, w in ipairs(weights) do args[#args + 1] = w end
  local found = redis.call('ZUNIONSTORE', unpack(args))
  if found == 0 then return nil end
  local sid, last = first_eligible(pid, rq, narrow(rq, tmp, found, tmp), minscore)
  redis.call('UNLINK', tmp)
  return sid, last
end

-- Best indexed survivor for a waiting request: most shared diagnoses, then most shared side
-- effects, then longest wait.  The work is kept to the survivors that can win, in stages:
--   1. survivors sharing a diagnosis AND a side effect: the union of the KEY.rank_pair sets of the
--      patient's codes, ranked by shared side effects (with two diagnoses, those sharing both come
--      first, whatever their side effects);
--   2. survivors sharing a diagnosis only: the longest waiting in KEY.rank_dx;
--   3. (not while holding out for a same diagnosis) side effects only: the union of KEY.rank_se.
-- A stage reads its union from the top and stops at the first eligible survivor; unions of
-- stage 1 hold the survivors who share a diagnosis and a side effect, not everyone who shares
-- a common side effect such as fatigue.  Patients with three or more diagnoses (rare) take the
-- single weighted union of every topic set (1000 per diagnosis, 1 per side effect).
local function best_survivor(pid, rq)
  local dx, se = cjson.decode(rq.dx), cjson.decode(rq.se)
  local strict = tonumber(rq.strict or '0') > NOW
  if #dx > 2 then
    local keys, weights = {}, {}
    for _, d in ipairs(dx) do keys[#keys + 1] = KEY.rank_dx(d); weights[#weights + 1] = 1000 end
    for _, e in ipairs(se) do keys[#keys + 1] = KEY.rank_se(e); weights[#weights + 1] = 1 end
    return (ranked_union(pid, rq, keys, weights, strict and 1000 or 1))
  end
  if #dx > 0 then
    local keys, weights = {}, {}
    local both = KEY.scratch_both
    if #dx == 2 and redis.call('ZINTERSTORE', both, 2, KEY.rank_dx(dx[1]), KEY.rank_dx(dx[2]),
                               'WEIGHTS', 1000, 0) > 0 then
      keys[1], weights[1] = both, 1
    end
    for _, d in ipairs(dx) do
      for _, e in ipairs(se) do keys[#keys + 1] = KEY.rank_pair(d, e); weights[#weights + 1] = 1 end
    end
    local sid = ranked_union(pid, rq, keys, weights, 1)
    redis.call('UNLINK', both)
    if sid then return sid end
    local best, best_last = nil, nil
    for _, d in ipairs(dx) do
      local key = KEY.rank_dx(d)
      local size = redis.call('ZCARD', key)
      if size > 0 then
        local read = narrow(rq, key, size, KEY.scratch)
        local cand, last = first_eligible(pid, rq, read, 1)
        if read ~= key then redis.call('UNLINK', read) end
        if cand and (not best or last < best_last) then best, best_last = cand, last end
      end
    end
    if best then return best end
  end
  if strict then return nil end
  local keys, weights = {}, {}
  for _, e in ipairs(se) do keys[#keys + 1] = KEY.rank_se(e); weights[#weights + 1] = 1 end
  return (ranked_union(pid, rq, keys, weights, 1))
end

-- Whether an indexed survivor suits a waiting request (the survivor-side view of best_survivor).
local function suits(pid, rq, sv)
  if not pair_ok(pid, rq, sv.id) then return false end
  local sdx = #intersect(cjson.decode(rq.dx), cjson.decode(sv.dx))
  if tonumber(rq.strict or '0') > NOW then return sdx > 0 end
  return sdx > 0 or #intersect(cjson.decode(rq.se), cjson.decode(sv.se)) > 0
end

-- ---------------------------------------------------------------- the request index
-- A request is "ready" while it waits for an offer with its patient present (state waiting, not
-- away).  Ready requests are in one sorted set per diagnosis, side effect and language (KEY.ready_*),
-- scored by their enqueue time, so a survivor with a free slot reads only the requests that share
-- a topic and a language with them (serve_survivor) instead of every request in the queue, offered
-- and away ones included: with 500 patients in the queue that walk cost 1.5 ms a call (bench/README.md).
-- rq.rdy says whether the request is in the sets.
local function set_ready(pid, rq, want)
  if want and rq and rq.target and rq.target ~= '' then want = false end   -- talk_again: that survivor only
  if not rq or not rq.dx or (rq.rdy == '1') == want then return end
  local score = NOW
  if want then score = tonumber(redis.call('ZSCORE', KEY.queue, pid) or NOW) end
  local function z(key)
    if want then redis.call('ZADD', key, score, pid) else redis.call('ZREM', key, pid) end
  end
  for _, d in ipairs(cjson.decode(rq.dx)) do z(KEY.ready_dx(d)) end
  for _, e in ipairs(cjson.decode(rq.se)) do z(KEY.ready_se(e)) end
  for _, l in ipairs(cjson.decode(rq.lang)) do z(KEY.ready_lang(l)) end
  rq.rdy = want and '1' or '0'
  redis.call('HSET', KEY.request(pid), 'rdy', rq.rdy)
end

-- bring a request's place in the index in line with its state (after any change of state or away)
local function sync_ready(pid)
  local rq = hgetall(KEY.request(pid))
  if rq then set_ready(pid, rq, rq.state == 'waiting' and tonumber(rq.away or '0') == 0) end
end

-- The requests of one family of indexes (kdx, kse, klang: the ready one, or the talk-later one) that
-- share a diagnosis or side effect, and a language, with a survivor, oldest first (at most 500), as an
-- iterator of (pid, enqueue time).  A lazy merge of the per-topic sets (each already in enqueue
-- order) read 32 at a time, a language check (ZSCORE) for each: the work is the requests looked at,
-- not the size of the sets, so a survivor who takes the first one pays for one.  Pages are read by
-- score, after the last one seen, so requests leaving the sets meanwhile (offered) shift nothing.
local function reach_iter(sv, kdx, kse, klang)
  local langs, cursors = {}, {}
  for _, l in ipairs(cjson.decode(sv.lang or '[]')) do langs[#langs + 1] = klang(l) end
  local function cursor(key) cursors[#cursors + 1] = {key = key, items = {}, pos = 1, after = '-inf'} end
  for _, d in ipairs(cjson.decode(sv.dx or '[]')) do cursor(kdx(d)) end
  for _, e in ipairs(cjson.decode(sv.se or '[]')) do cursor(kse(e)) end
  local function head(c)
    if c.pos > #c.items then
      if c.after == nil then return nil end
      local batch = redis.call('ZRANGEBYSCORE', c.key, c.after, '+inf', 'WITHSCORES', 'LIMIT', 0, 32)
      c.items, c.pos = {}, 1
      for j = 1, #batch, 2 do c.items[#c.items + 1] = {batch[j], tonumber(batch[j + 1])} end
      if #c.items < 32 then c.after = nil else c.after = '(' .. batch[#batch] end
      if #c.items == 0 then return nil end
    end
    return c.items[c.pos]
  end
  local seen, looked = {}, 0
  return function()
    while looked < 500 and #langs > 0 do
      local best, from = nil, nil
      for _, c in ipairs(cursors) do
        local h = head(c)
        if h and (not best or h[2] < best[2] or (h[2] == best[2] and h[1] < best[1])) then best, from = h, c end
      end
      if not best then return nil end
      from.pos = from.pos + 1
      local pid = best[1]
      if not seen[pid] then
        seen[pid] = true
        for _, l in ipairs(langs) do
          if redis.call('ZSCORE', l, pid) then
            looked = looked + 1
            return pid, best[2]
          end
        end
      end
    end
    return nil
  end
end

-- reach_iter's requests as a list (pid, score, pid, score, ... with ``withscores``)
local function reach_of(sv, kdx, kse, klang, withscores)
  local out = {}
  for pid, score in reach_iter(sv, kdx, kse, klang) do
    out[#out + 1] = pid
    if withscores then out[#out + 1] = score end
  end
  return out
end

local function ready_for(sv)
  return reach_iter(sv, KEY.ready_dx, KEY.ready_se, KEY.ready_lang)
end

-- ---------------------------------------------------------------- offers and matches
local serve_survivor, try_match, drop_request

-- Survivors who fit a waiting request as it stands: (available with a free slot now, available but
-- busy: in a conversation, an offer out or cooling down).  Counted on the availability index; the
-- patient, blocked, current and declined peers are left out.  matcher/estimate.py says what follows.
local function fit_counts(pid, rq)
  if rq.target and rq.target ~= '' then
    local sv = hgetall(KEY.survivor(rq.target))
    if not sv or sv.aix ~= '1' or rq.target == pid then return 0, 0 end
    for _, key in ipairs({KEY.blocks(pid), KEY.peers(pid), KEY.request_declined(pid)}) do
      if redis.call('SISMEMBER', key, rq.target) == 1 then return 0, 0 end
    end
    if sv.idx == '1' then return 1, 0 end
    return 0, 1
  end
  local strict = tonumber(rq.strict or '0') > NOW
  local topics, langs = {}, {}
  for _, d in ipairs(cjson.decode(rq.dx)) do topics[#topics + 1] = KEY.avail_dx(d) end
  if not strict then
    for _, e in ipairs(cjson.decode(rq.se)) do topics[#topics + 1] = KEY.avail_se(e) end
  end
  for _, l in ipairs(cjson.decode(rq.lang)) do langs[#langs + 1] = KEY.avail_lang(l) end
  if #topics == 0 or #langs == 0 then return 0, 0 end
  local tmp = KEY.scratch_fit
  redis.call('SUNIONSTORE', tmp, unpack(topics))
  -- tmp ∩ (L1 ∪ L2 ...) as (tmp ∩ L1) ∪ (tmp ∩ L2) ...: each intersection walks the topic set, which is
  -- small, never a whole language's set (a union of the language sets would copy nearly every survivor)
  local total
  if #langs == 1 then
    total = redis.call('SINTERSTORE', tmp, tmp, langs[1])
  else
    redis.call('SINTERSTORE', KEY.scratch_langs, tmp, langs[1])
    for i = 2, #langs do
      local more = redis.call('SINTER', tmp, langs[i])
      for j = 1, #more, 1000 do
        redis.call('SADD', KEY.scratch_langs, unpack(more, j, math.min(j + 999, #more)))
      end
    end
    total = redis.call('SINTERSTORE', tmp, tmp, KEY.scratch_langs)
  end
  local free = 0
  if total > 0 then free = redis.call('ZINTERSTORE', KEY.scratch, 2, tmp, KEY.wait_index) end
  local seen = {}
  local function leave_out(sid)
    if seen[sid] or redis.call('SISMEMBER', tmp, sid) == 0 then return end
    seen[sid] = true
    total = total - 1
    if redis.call('ZSCORE', KEY.scratch, sid) then free = free - 1 end
  end
  leave_out(pid)
  for _, key in ipairs({KEY.blocks(pid), KEY.peers(pid), KEY.request_declined(pid)}) do
    for _, sid in ipairs(redis.call('SMEMBERS', key)) do leave_out(sid) end
  end
  redis.call('UNLINK', tmp, KEY.scratch_langs, KEY.scratch)
  return free, total - free
end

-- the measured rates of survivors becoming free, for the request's topic classes and languages
local function free_counts(rq)
  local strict = tonumber(rq.strict or '0') > NOW
  local topics, fields = {}, {}
  for _, d in ipairs(cjson.decode(rq.dx)) do topics[#topics + 1] = 'dx=' .. d end
  if not strict then
    for _, e in ipairs(cjson.decode(rq.se)) do topics[#topics + 1] = 'se=' .. e end
  end
  for _, t in ipairs(topics) do
    for _, l in ipairs(cjson.decode(rq.lang)) do fields[#fields + 1] = t .. '|' .. l end
  end
  local out = {}
  if #fields == 0 then return out end
  for _, v in ipairs(redis.call('HMGET', KEY.free_rates, unpack(fields))) do
    if v then out[#out + 1] = v end
  end
  return out
end

-- The queued frame as published: the gateway's hub turns "wait" (the inputs) into estimated_wait_s
-- and reason with matcher/estimate.py (pure, unit-tested) before a client sees it.  refresh: send it
-- even when the position is unchanged (a join, a widen).
local function queued_frame(pid, refresh)
  local rank = redis.call('ZRANK', KEY.queue, pid)
  if not rank then return nil end
  local rq = hgetall(KEY.request(pid))
  if not rq then return nil end
  local free, busy = fit_counts(pid, rq)
  local rates = free_counts(rq)
  local wait = {busy = busy, now = NOW, half_life_s = tonumber(CFG.free_half_life_s or 3600), rates = '__RATES__'}
  local f = cjson.encode({type = 'queued', position = rank + 1, fitting_available = free, wait = wait,
                          refresh = refresh or nil})
  return (string.gsub(f, '"__RATES__"', function() return jarr(rates) end))
end

local drop_later    -- defined with the talk-later requests below

-- lr: the talk-later request the offer came from (nil for a talk-now offer)
local function create_conversation(of, oid, lr)
  local pid, sid = of.patient, of.survivor
  local rq = lr or hgetall(KEY.request(pid)) or {}
  local sv = hgetall(KEY.survivor(sid))
  local cid = newid('c')
  local epoch = newid('e')
  redis.call('HSET', KEY.conversation(cid), 'patient', pid, 'survivor', sid, 'patient_name', of.pname,
             'survivor_name', sv.name, 'shared', of.shared, 'created', NOW, 'epoch', epoch, 'state', 'open',
             'plang', rq.lang or '[]')
  if lr then redis.call('HSET', KEY.conversation(cid), 'later', lr.id) end
  for _, uid in ipairs({pid, sid}) do
    redis.call('SADD', KEY.user_convs(uid), cid)
    redis.call('SADD', KEY.user_history(uid), cid)
  end
  redis.call('SADD', KEY.peers(pid), sid)
  local today = today_count(sv) + 1
  redis.call('HSET', KEY.survivor(sid), 'act', tonumber(sv.act) + 1, 'last', NOW, 'to', 0, 'day', DAY, 'today', today)
  if today >= tonumber(CFG.daily_cap) then
    -- capped for today: tick looks at them again at midnight (GT: a later cool-down end stays)
    redis.call('ZADD', KEY.cooldowns, 'GT', (tonumber(DAY) + 1) * 86400, sid)
  end
  -- still findable (free slots left): their wait restarts now, or they would win every tie again
  if sv.idx == '1' then
    redis.call('ZADD', KEY.wait_index, NOW, sid)
    sv.id, sv.last = sid, NOW
    index_sets(sv, 'SADD')      -- re-scores the topic indexes (rank_score) too
  end
  local wait = NOW - tonumber(rq.created or NOW)
  local ewma = tonumber(redis.call('HGET', KEY.stats, 'wait_ewma') or CFG.ewma_default_s)
  redis.call('HSET', KEY.stats, 'wait_ewma', 0.8 * ewma + 0.2 * wait)
  redis.call('HINCRBY', KEY.stats, 'matches', 1)
  if lr then
    redis.call('HINCRBY', KEY.stats, 'later_matches', 1)
    drop_later(pid)            -- its other offers are withdrawn; a live talk-now request stays
  else
    set_ready(pid, hgetall(KEY.request(pid)), false)
    if rq.target and rq.target ~= '' then redis.call('ZREM', KEY.later_for(rq.target), pid) end
    redis.call('DEL', KEY.request(pid), KEY.request_declined(pid))
    redis.call('ZREM', KEY.queue, pid)
    redis.call('ZREM', KEY.relax, pid)
    redis.call('ZREM', KEY.away, pid)
  end
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
  local of = hgetall(KEY.offer(oid))
  if not of then return nil end
  redis.call('DEL', KEY.offer(oid))
  redis.call('ZREM', KEY.offer_deadlines, oid)
  redis.call('SREM', KEY.survivor_offers(of.survivor), oid)
  redis.call('HINCRBY', KEY.survivor(of.survivor), 'pend', -1)
  return of
end

local function accept_offer(oid)
  local of = take_offer(oid)
  if not of then return nil end
  redis.call('HINCRBY', KEY.stats, 'offers_accepted', 1)
  return create_conversation(of, oid)
end

local function make_offer(pid, rq, sid)
  local sv = hgetall(KEY.survivor(sid))
  sv.id = sid
  local oid = newid('o')
  local shared = shared_json(rq, sv)
  local expires = NOW + tonumber(CFG.offer_timeout_s)
  redis.call('HSET', KEY.offer(oid), 'patient', pid, 'survivor', sid, 'pname', rq.name,
             'shared', shared, 'expires', expires)
  redis.call('SADD', KEY.survivor_offers(sid), oid)
  redis.call('HINCRBY', KEY.survivor(sid), 'pend', 1)
  redis.call('HSET', KEY.request(pid), 'state', 'offered', 'offer', oid)
  rq.state = 'offered'
  set_ready(pid, rq, false)
  redis.call('HINCRBY', KEY.stats, 'offers_made', 1)
  if sv.auto == '1' then
    return accept_offer(oid)
  end
  redis.call('ZADD', KEY.offer_deadlines, expires, oid)
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
  redis.call('HINCRBY', KEY.stats, 'offers_' .. outcome, 1)
  if outcome == 'timeout' then
    local streak = redis.call('HINCRBY', KEY.survivor(sid), 'to', 1)
    pub(sid, cjson.encode({type = 'offer_expired', offer_id = oid}))
    if streak >= 2 then
      redis.call('HSET', KEY.survivor(sid), 'av', '0', 'to', 0)
      pub(sid, cjson.encode({type = 'availability', available = false, reason = 'missed_offers',
                             message = 'Two offers in a row went unanswered, so you are now unavailable.'}))
    end
  elseif outcome == 'declined' then
    redis.call('HSET', KEY.survivor(sid), 'to', 0)
  else
    pub(sid, cjson.encode({type = 'offer_withdrawn', offer_id = oid}))
  end
  if outcome ~= 'cancelled' and redis.call('EXISTS', KEY.request(pid)) == 1 then
    -- not again for this request: a survivor who said no or let it lapse.  A withdrawal (their
    -- connection died, they were suspended or erased) is no answer: back within the grace
    -- period, they may be offered again
    if outcome == 'declined' or outcome == 'timeout' then
      redis.call('SADD', KEY.request_declined(pid), sid)
    end
    redis.call('HSET', KEY.request(pid), 'state', 'waiting', 'offer', '')
    local target = redis.call('HGET', KEY.request(pid), 'target')
    if target and target ~= '' and (outcome == 'declined' or outcome == 'timeout') then
      drop_request(pid, 'declined')      -- talk_again asked for that survivor only
    else
      sync_ready(pid)
      try_match(pid)
    end
  end
  reindex(sid)
  serve_survivor(sid)
  return of
end

try_match = function(pid)
  local rq = hgetall(KEY.request(pid))
  if not rq or rq.state ~= 'waiting' or tonumber(rq.away or '0') > 0 then return nil end
  local sid
  if rq.target and rq.target ~= '' then      -- talk_again: that survivor or nobody
    local sv = hgetall(KEY.survivor(rq.target))
    if sv and sv.idx == '1' and pair_ok(pid, rq, rq.target) then sid = rq.target end
  else
    sid = best_survivor(pid, rq)
  end
  if not sid then return nil end
  return make_offer(pid, rq, sid)
end

-- a survivor has a free slot: offer them to the oldest waiting patients they suit
local serve_later     -- defined with the talk-later requests below

-- a survivor has a free slot: live talk_again requests addressed to them first, then the oldest
-- waiting patients they suit, then (still free) talk-later requests as cards
serve_survivor = function(sid)
  local sv = reindex(sid)
  if not sv or sv.idx ~= '1' then return end
  -- offer them to a waiting, present request that passes ``fits``; false once they have no free slot
  local function offer(pid, fits)
    local rq = hgetall(KEY.request(pid))
    if not (rq and rq.state == 'waiting' and tonumber(rq.away or '0') == 0 and fits(rq)) then return true end
    make_offer(pid, rq, sid)
    sv = hgetall(KEY.survivor(sid))
    sv.id = sid
    return sv.idx == '1'
  end
  for _, pid in ipairs(redis.call('ZRANGE', KEY.later_for(sid), 0, 99)) do
    if not offer(pid, function(rq) return rq.target == sid and pair_ok(pid, rq, sid) end) then return end
  end
  for pid in ready_for(sv) do
    if not offer(pid, function(rq) return suits(pid, rq, sv) end) then return end
  end
  serve_later(sid, sv)
end

-- ---------------------------------------------------------------- talk-later requests
-- KEY.later(pid): id, name, dx, se, lang, note, created, expires, target ('' or the survivor a
-- talk_again addressed).  Untargeted ones are in KEY.later_dx / later_se / later_lang (by created),
-- addressed ones in KEY.later_for(sid).  Offers of them ("cards") are KEY.offer records with a
-- "later" field; they hold no slot (pend), have no deadline and stay until answered, withdrawn
-- (the survivor went unavailable or offline) or taken by another survivor.
local LATER_CARDS = 10       -- talk-later offers one survivor holds at most
local LATER_FANOUT = 10      -- survivors a new talk-later request is offered to at once

local function later_sets(pid, lr, add)
  local score = tonumber(lr.created)
  local function z(key)
    if add then redis.call('ZADD', key, score, pid) else redis.call('ZREM', key, pid) end
  end
  if lr.target and lr.target ~= '' then z(KEY.later_for(lr.target)); return end
  for _, d in ipairs(cjson.decode(lr.dx)) do z(KEY.later_dx(d)) end
  for _, e in ipairs(cjson.decode(lr.se)) do z(KEY.later_se(e)) end
  for _, l in ipairs(cjson.decode(lr.lang)) do z(KEY.later_lang(l)) end
end

-- whether survivor sv may be offered talk-later request lr (the survivor side is checked by the caller)
local function later_pair_ok(pid, lr, sv)
  local sid = sv.id
  if sid == pid then return false end
  local target = lr.target or ''
  if target ~= '' and target ~= sid then return false end
  if redis.call('SISMEMBER', KEY.blocks(pid), sid) == 1 then return false end
  if redis.call('SISMEMBER', KEY.peers(pid), sid) == 1 then return false end
  if redis.call('SISMEMBER', KEY.later_declined(pid), sid) == 1 then return false end
  if target ~= '' then return true end
  if #intersect(cjson.decode(lr.lang), cjson.decode(sv.lang or '[]')) == 0 then return false end
  return #intersect(cjson.decode(lr.dx), cjson.decode(sv.dx or '[]')) > 0
      or #intersect(cjson.decode(lr.se), cjson.decode(sv.se or '[]')) > 0
end

-- a patient's talk-later request, if it may be offered now (a live talk-now request comes first)
local function later_open(pid)
  local lr = hgetall(KEY.later(pid))
  if not lr or redis.call('EXISTS', KEY.request(pid)) == 1 or is_suspended(pid) then return nil end
  return lr
end

local function later_frame(oid, lr, shared)
  return frame({type = 'later_offer', offer_id = oid, patient = {name = lr.name},
                note = (lr.note ~= '' and lr.note) or cjson.null, waiting_since = tonumber(lr.created)}, shared)
end

local function offer_later_to(pid, lr, sv)
  if redis.call('HEXISTS', KEY.later_offers(pid), sv.id) == 1 then return false end
  if redis.call('SCARD', KEY.survivor_later(sv.id)) >= LATER_CARDS then return false end
  if not later_pair_ok(pid, lr, sv) then return false end
  local oid = newid('o')
  local shared = shared_json(lr, sv)
  redis.call('HSET', KEY.offer(oid), 'patient', pid, 'survivor', sv.id, 'pname', lr.name, 'shared', shared,
             'later', lr.id)
  redis.call('HSET', KEY.later_offers(pid), sv.id, oid)
  redis.call('SADD', KEY.survivor_later(sv.id), oid)
  redis.call('HINCRBY', KEY.stats, 'later_offers_made', 1)
  pub(sv.id, later_frame(oid, lr, shared))
  return true
end

-- remove a talk-later offer's bookkeeping; returns its record or nil
local function take_later_offer(oid)
  local of = hgetall(KEY.offer(oid))
  if not of or not of.later then return nil end
  redis.call('DEL', KEY.offer(oid))
  redis.call('SREM', KEY.survivor_later(of.survivor), oid)
  if redis.call('HGET', KEY.later_offers(of.patient), of.survivor) == oid then
    redis.call('HDEL', KEY.later_offers(of.patient), of.survivor)
  end
  return of
end

local function withdraw_later_offer(oid)
  local of = take_later_offer(oid)
  if of then pub(of.survivor, cjson.encode({type = 'offer_withdrawn', offer_id = oid})) end
end

-- the survivor went unavailable, offline or out of matching: their cards go
local function withdraw_survivor_later(sid)
  for _, oid in ipairs(redis.call('SMEMBERS', KEY.survivor_later(sid))) do withdraw_later_offer(oid) end
end

-- a live talk-now request takes precedence: the patient's cards are withdrawn meanwhile
local function hold_later(pid)
  for _, oid in ipairs(redis.call('HVALS', KEY.later_offers(pid))) do withdraw_later_offer(oid) end
end

-- the talk-later request leaves (matched, cancelled, expired, replaced, erased); returns its record
drop_later = function(pid)
  local lr = hgetall(KEY.later(pid))
  if not lr then return nil end
  hold_later(pid)
  later_sets(pid, lr, false)
  redis.call('DEL', KEY.later(pid), KEY.later_offers(pid), KEY.later_declined(pid))
  redis.call('ZREM', KEY.later_deadlines, pid)
  return lr
end

-- offer a talk-later request to the survivors open to offers now (best ranked first, a few at once)
local function spread_later(pid)
  local lr = later_open(pid)
  if not lr then return end
  if lr.target and lr.target ~= '' then
    local sv = hgetall(KEY.survivor(lr.target))
    if sv and sv.idx == '1' then sv.id = lr.target; offer_later_to(pid, lr, sv) end
    return
  end
  local keys, weights = {}, {}
  for _, d in ipairs(cjson.decode(lr.dx)) do keys[#keys + 1] = KEY.rank_dx(d); weights[#weights + 1] = 1000 end
  for _, e in ipairs(cjson.decode(lr.se)) do keys[#keys + 1] = KEY.rank_se(e); weights[#weights + 1] = 1 end
  if #keys == 0 then return end
  local args = {KEY.scratch, #keys}
  for _, k in ipairs(keys) do args[#args + 1] = k end
  args[#args + 1] = 'WEIGHTS'
  for _, w in ipairs(weights) do args[#args + 1] = w end
  redis.call('ZUNIONSTORE', unpack(args))
  local cands = redis.call('ZREVRANGE', KEY.scratch, 0, 199)
  redis.call('UNLINK', KEY.scratch)
  local n = 0
  for _, sid in ipairs(cands) do
    if n >= LATER_FANOUT then return end
    local sv = hgetall(KEY.survivor(sid))
    if sv and sv.idx == '1' then
      sv.id = sid
      if offer_later_to(pid, lr, sv) then n = n + 1 end
    end
  end
end

-- a survivor open to offers, with no live request left for them: talk-later cards, addressed ones
-- and those in reach together, oldest first
serve_later = function(sid, sv)
  if redis.call('SCARD', KEY.survivor_later(sid)) >= LATER_CARDS then return end
  local cands = {}
  local addressed = redis.call('ZRANGE', KEY.later_for(sid), 0, 99, 'WITHSCORES')
  for i = 1, #addressed, 2 do cands[#cands + 1] = {addressed[i], tonumber(addressed[i + 1])} end
  local near = reach_of(sv, KEY.later_dx, KEY.later_se, KEY.later_lang, true)
  for i = 1, #near, 2 do cands[#cands + 1] = {near[i], tonumber(near[i + 1])} end
  table.sort(cands, function(a, b) return a[2] < b[2] end)
  for _, c in ipairs(cands) do
    if redis.call('SCARD', KEY.survivor_later(sid)) >= LATER_CARDS then return end
    local lr = later_open(c[1])
    if lr then offer_later_to(c[1], lr, sv) end
  end
end

-- withdraw every pending offer a survivor holds (left, suspended)
local function withdraw_offers(sid)
  for _, oid in ipairs(redis.call('SMEMBERS', KEY.survivor_offers(sid))) do
    release_offer(oid, 'withdrawn')
  end
  withdraw_survivor_later(sid)
end

drop_request = function(pid, why)
  local rq = hgetall(KEY.request(pid))
  if not rq then return false end
  if rq.state == 'offered' and rq.offer ~= '' then release_offer(rq.offer, 'cancelled') end
  if rq.target and rq.target ~= '' then redis.call('ZREM', KEY.later_for(rq.target), pid) end
  set_ready(pid, hgetall(KEY.request(pid)), false)
  redis.call('DEL', KEY.request(pid), KEY.request_declined(pid))
  redis.call('ZREM', KEY.queue, pid)
  redis.call('ZREM', KEY.relax, pid)
  redis.call('ZREM', KEY.away, pid)
  pub(pid, cjson.encode({type = 'cancelled', reason = why}))
  if why ~= 'suspended' and why ~= 'erased' then spread_later(pid) end   -- its talk-later request, if any
  return true
end

-- out of matching (suspension, erasure): request dropped, survivor switched off and unindexed,
-- their pending offers withdrawn
local function leave_matching(uid, why)
  drop_request(uid, why)
  drop_later(uid)
  if redis.call('EXISTS', KEY.survivor(uid)) == 1 then
    redis.call('HSET', KEY.survivor(uid), 'av', '0')
    reindex(uid)
    withdraw_offers(uid)
  end
end

-- ---------------------------------------------------------------- contacts (keep in touch)
-- KEY.contact(kid): patient, survivor, their names, shared topics, the patient's languages, created.
-- Both users' KEY.user_contacts hold kid.  Ending one removes it for both; requests the patient
-- addressed to that survivor (talk_again) go with it, silently.
local function end_contact_rec(kid)
  local ct = hgetall(KEY.contact(kid))
  if not ct then return nil end
  redis.call('DEL', KEY.contact(kid))
  redis.call('SREM', KEY.user_contacts(ct.patient), kid)
  redis.call('SREM', KEY.user_contacts(ct.survivor), kid)
  local lr = hgetall(KEY.later(ct.patient))
  if lr and lr.target == ct.survivor then drop_later(ct.patient) end
  local rq = hgetall(KEY.request(ct.patient))
  if rq and rq.target == ct.survivor then drop_request(ct.patient, 'contact_ended') end
  return ct
end

local function end_contacts_between(a, b)
  for _, kid in ipairs(redis.call('SMEMBERS', KEY.user_contacts(a))) do
    local who = redis.call('HMGET', KEY.contact(kid), 'patient', 'survivor')
    if who[1] == b or who[2] == b then end_contact_rec(kid) end
  end
end

local function result(t)
  t.created = CREATED
  if #CREATED == 0 then t.created = nil end
  return cjson.encode(t)
end
