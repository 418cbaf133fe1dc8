--! include group_lib.lua
-- group_join.lua: join a group, or take a place on its waitlist, in one atomic step: the capacity is
-- never exceeded, however many joins race through however many gateways, and the waitlist is first
-- come, first served.
-- KEYS[1] meta  KEYS[2] members  KEYS[3] names  KEYS[4] waitlist  KEYS[5] waiting  KEYS[6] removed
-- ARGV[1] user id  ARGV[2] name  ARGV[3] role  ARGV[4] facilitator (1|0)
-- ARGV[5] mode: 'wait' (a full group puts them on the waitlist) or 'room' (find_group: only if there is room)
-- Returns {'joined'|'member', name, seq joined at, epoch, members}  (member: they were in it already),
--         {'waitlisted', position, members}  or, in 'room' mode, {'full'}.
-- Refuses: not_found (no such group), group_closed, forbidden (removed and not readmitted).
local uid = ARGV[1]
local m = redis.call('HMGET', KEYS[1], 'kind', 'state', 'capacity', 'epoch')
if m[1] ~= 'group' then
  return redis.error_reply('AT:not_found:There is no such group.')
end
local rec = redis.call('HGET', KEYS[2], uid)
if rec then
  local f = split_record(rec)
  return {'member', f[1], tonumber(f[4]), m[4], redis.call('HLEN', KEYS[2])}
end
if m[2] ~= 'open' then
  return redis.error_reply('AT:group_closed:This group has closed.')
end
if redis.call('HEXISTS', KEYS[6], uid) == 1 then
  return redis.error_reply('AT:forbidden:You cannot rejoin this group.')
end
local count = redis.call('HLEN', KEYS[2])
if count < tonumber(m[3]) then
  redis.call('ZREM', KEYS[4], uid)
  redis.call('HDEL', KEYS[5], uid)
  local given = admit(KEYS[1], KEYS[2], KEYS[3], uid, ARGV[2], ARGV[3], ARGV[4])
  return {'joined', given, tonumber(redis.call('HGET', KEYS[1], 'seq')), m[4], count + 1}
end
if redis.call('ZSCORE', KEYS[4], uid) then
  return {'waitlisted', redis.call('ZRANK', KEYS[4], uid) + 1, count}
end
if ARGV[5] == 'room' then
  return {'full'}
end
local ticket = redis.call('HINCRBY', KEYS[1], 'wl_ticket', 1)
redis.call('ZADD', KEYS[4], ticket, uid)
redis.call('HSET', KEYS[5], uid, ARGV[2] .. US .. ARGV[3] .. US .. ARGV[4])
return {'waitlisted', redis.call('ZRANK', KEYS[4], uid) + 1, count}
