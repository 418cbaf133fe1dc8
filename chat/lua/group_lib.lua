-- group_lib.lua: shared by the group scripts (group_join, group_leave, group_admin).  Everything a group
-- holds lives in its own slot ({c:ID}): the meta hash (kind 'group', state, capacity, seq, pinned_*),
-- members (uid -> "name<US>role<US>facilitator(0|1)<US>seq when they joined<US>join number"), names (name -> uid, so a
-- name is unique in the group), the waitlist (zset uid -> ticket) with its records (waiting: uid ->
-- "name<US>role<US>facilitator"), mutes (uid -> until, ms) and removals (uid -> the name they had).
local US = '\31'

local function group_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split_record(rec)
  local out = {}
  for part in string.gmatch(rec .. US, '([^' .. US .. ']*)' .. US) do out[#out + 1] = part end
  return out
end

-- a name nobody else in the group has: name, "name 2", "name 3", ...
local function unique_name(names_key, name, uid)
  local candidate, n = name, 1
  while true do
    local holder = redis.call('HGET', names_key, candidate)
    if not holder or holder == uid then return candidate end
    n = n + 1
    candidate = name .. ' ' .. n
  end
end

-- make uid a member now; returns the name they got
local function admit(meta_key, members_key, names_key, uid, name, role, fac)
  local given = unique_name(names_key, name, uid)
  local seq = redis.call('HGET', meta_key, 'seq') or '0'
  local order = redis.call('HINCRBY', meta_key, 'joins', 1)      -- members are listed in the order they joined
  redis.call('HSET', names_key, given, uid)
  redis.call('HSET', members_key, uid, given .. US .. role .. US .. fac .. US .. seq .. US .. order)
  return given
end

-- may `actor` use the facilitator tools here?  A moderator anywhere; a facilitator who is a member.
local function may_lead(members_key, actor, is_moderator)
  if is_moderator == '1' then return true end
  local rec = redis.call('HGET', members_key, actor)
  return rec ~= false and rec ~= nil and split_record(rec)[3] == '1'
end
