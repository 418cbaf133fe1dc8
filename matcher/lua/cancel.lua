--! include lib.lua
-- A patient leaves the queue (withdrawing any pending offer).
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] patient id
-- Returns JSON {cancelled: true}.  Refuses: not_found (no waiting request).
if not drop_request(ARGV[5], 'cancelled') then
  return refuse('not_found', 'You have no waiting request.')
end
return result({cancelled = true})
