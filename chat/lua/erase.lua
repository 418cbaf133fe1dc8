-- erase.lua: remove one user's words and name from one conversation's log, for good.
-- KEYS[1] meta hash  KEYS[2] log stream  KEYS[3] client-id hash   (one {c:ID} slot)
-- ARGV[1] user id  ARGV[2] replacement display name ("Deleted user")
-- Stream entries cannot be edited, and XDEL only marks entries deleted inside the node, which keeps
-- the bytes in memory, in RDB/DUMP and in an RDB-preamble AOF.  So the log is rebuilt: read every
-- entry, DEL the stream, and XADD every entry again with its own id "<seq>-1", the user's entries
-- with text "" , no "shown" and the replacement name.  Seqs, order and the peer's entries are kept.
-- The meta hash gets "erased:<uid>" = time (append refuses that sender from then on), the user's
-- name field becomes the replacement and their feedback comment is removed.  Their client ids leave
-- the client-id hash (append refuses them anyway, so no retry needs them).
-- Returns the number of the user's entries that were rewritten (0 on a second run).
local uid, deleted = ARGV[1], ARGV[2]
local m = redis.call('HMGET', KEYS[1], 'patient', 'survivor')
if m[1] or m[2] then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'erased:' .. uid, t[1])
  for _, role in ipairs({'patient', 'survivor'}) do
    local id = (role == 'patient') and m[1] or m[2]
    if id == uid then
      redis.call('HSET', KEYS[1], role .. '_name', deleted)
      redis.call('HDEL', KEYS[1], role .. '_comment')
    end
  end
end

local mine = #uid .. ':' .. uid .. ':'      -- the client-id hash's fields: "<len(sender)>:<sender>:<client id>"
for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
  if string.sub(field, 1, #mine) == mine then redis.call('HDEL', KEYS[3], field) end
end

local entries = redis.call('XRANGE', KEYS[2], '-', '+')
local hit = {}
local n = 0
for i, e in ipairs(entries) do
  local f = e[2]
  local from, text, name, shown = nil, nil, nil, false
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'from' then from = f[j + 1]
    elseif k == 'text' then text = f[j + 1]
    elseif k == 'name' then name = f[j + 1]
    elseif k == 'shown' then shown = true end
  end
  if from == uid and (text ~= '' or name ~= deleted or shown) then
    hit[i] = true
    n = n + 1
  end
end
if n == 0 then return 0 end

redis.call('DEL', KEYS[2])
for i, e in ipairs(entries) do
  local f = e[2]
  if hit[i] then
    local out = {}
    for j = 1, #f, 2 do
      local k, v = f[j], f[j + 1]
      if k == 'text' then v = '' elseif k == 'name' then v = deleted end
      if k ~= 'shown' then
        out[#out + 1] = k
        out[#out + 1] = v
      end
    end
    f = out
  end
  redis.call('XADD', KEYS[2], e[1], unpack(f))
end
return n
