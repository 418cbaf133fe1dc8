--! include lib.lua
-- A moderator suspends a user: no matching, pending offers and requests withdrawn.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] user id  ARGV[6] suspended until (epoch seconds; 0 = until lifted)  ARGV[7] reason
-- Returns JSON {suspended: true}.  The gateway closes the user's connections on the published frame.
local uid = ARGV[5]
redis.call('HSET', KEY.suspended, uid, ARGV[6])
leave_matching(uid, 'suspended')
pub(uid, cjson.encode({type = 'suspended', reason = ARGV[7], ['until'] = tonumber(ARGV[6])}))
return result({suspended = true})
