--! include lib.lua
-- A survivor answers an offer (a talk-now offer or a talk-later card).
-- KEYS[1] control-plane stats key (see lib.lua)        ARGV[1..4] see lib.lua
-- ARGV[5] survivor id  ARGV[6] offer id  ARGV[7] "accept" | "decline"
-- Returns JSON {outcome, conversation_id?, created?}.
-- Refuses: not_found (no such offer for this survivor: expired, withdrawn, taken or never theirs);
-- capacity (accepting a talk-later card with no free slot, cooling down or at today's cap).
local sid, oid, action = ARGV[5], ARGV[6], ARGV[7]
local owner = redis.call('HGET', KEY.offer(oid), 'survivor')
if owner ~= sid then return refuse('not_found', 'This offer is no longer open.') end
local rid = redis.call('HGET', KEY.offer(oid), 'later')
if rid then
  local pid = redis.call('HGET', KEY.offer(oid), 'patient')
  if action ~= 'accept' then
    take_later_offer(oid)
    redis.call('SADD', KEY.later_declined(pid), sid)
    redis.call('HINCRBY', KEY.stats, 'later_offers_declined', 1)
    return result({outcome = 'declined'})
  end
  local sv = hgetall(KEY.survivor(sid))
  sv.id = sid
  if not indexable(sv) then
    return refuse('capacity', 'You cannot take a new conversation right now (no free slot, a pause or ' ..
                  'today\'s limit); the request stays open.')
  end
  local lr = later_open(pid)
  if not lr or lr.id ~= rid or not later_pair_ok(pid, lr, sv) then
    take_later_offer(oid)
    return refuse('not_found', 'This offer is no longer open.')
  end
  local of = take_later_offer(oid)
  local cid = create_conversation(of, oid, lr)
  return result({outcome = 'accepted', conversation_id = cid})
end
if action == 'accept' then
  local cid = accept_offer(oid)
  return result({outcome = 'accepted', conversation_id = cid})
end
release_offer(oid, 'declined')
return result({outcome = 'declined'})
