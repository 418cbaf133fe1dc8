--! include lib.lua
-- Erasure: a user leaves matching for good, silently (their data is about to be deleted).
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] user id
-- Their waiting request is dropped; as a survivor they are switched off, taken out of every match
-- index and their pending offers are withdrawn (the patients are told, as for any withdrawal).
-- Returns JSON {forgotten: true}.
local uid = ARGV[5]
leave_matching(uid, 'erased')
return result({forgotten = true})
