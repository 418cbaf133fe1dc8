-- group_reserve.lua: count a group against a user's limit of groups (joined or waiting), in the control
-- plane.  The group's own slot decides membership (group_join.lua); this set is only the per-user count,
-- taken before the join and given back if the join is refused (chat/groups.py says how a crash in between
-- is repaired).
-- KEYS[1] the user's groups set  KEYS[2] the user's conversation history set (erasure's work list)
-- ARGV[1] group id  ARGV[2] the most groups a user may be in
-- Returns 2 (counted already), 1 (counted now) or 0 (the user is at the limit: nothing changed).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
