--! include lib.lua
-- The queued frames (with their wait inputs, see lib.lua queued_frame) of some patients, unpublished:
-- for the welcome and the gateway's position updates.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] JSON list of patient ids
-- Returns JSON {frames: [frame JSON or "" per patient]}.
local out = {}
for i, pid in ipairs(cjson.decode(ARGV[5])) do out[i] = queued_frame(pid) or '' end
return result({frames = out})
