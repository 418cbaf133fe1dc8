--! include lib.lua
-- A survivor answers an offer.
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] survivor id  ARGV[6] offer id  ARGV[7] "accept" | "decline"
-- Returns JSON {outcome, conversation_id?, created?}.
-- Refuses: not_found (no such offer for this survivor: expired, withdrawn or never theirs).
local sid, oid, action = ARGV[5], ARGV[6], ARGV[7]
local owner = redis.call('HGET', KEY.offer(oid), 'survivor')
if owner ~= sid then return refuse('not_found', 'This offer is no longer open.') end
if action == 'accept' then
  local cid = accept_offer(oid)
  return result({outcome = 'accepted', conversation_id = cid})
end
release_offer(oid, 'declined')
return result({outcome = 'declined'})
