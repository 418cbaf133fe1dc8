"""Every Redis key and channel name, in one place.

Cluster layout: all matching, presence, moderation and audit state lives in
one hash slot (tag ``{ctl}``) so that the matcher's scripts can touch it
atomically; each conversation's log lives in its own slot (tag ``{c:ID}``),
so message traffic spreads over the cluster; the limits every gateway shares
(send bucket, typing hint, connection leases) live in a slot per user (tag
``{u:ID}``) or per address (``{ip:ADDR}``).  On a cluster a script only ever
touches keys of one tag (on a single node the append script also takes the
sender's send bucket and queues for screening, in the same step).  Plain
pub/sub channels are not keys and carry no tag; the two shard channels of a
conversation (cluster mode only, SPUBLISH) carry its ``{c:ID}`` tag, so its
append script may publish to them.

The Lua scripts spell no key either: every control-plane name below (those under
``ctl``) reaches them as the table ``KEY`` (``KEY.survivor(uid)``, ``KEY.queue``, ...)
that core/scripts.py generates from this class, so a key is named here or nowhere
(tests/unit/test_lua_keys.py checks the scripts for hand-written key text).
"""
from __future__ import annotations

from dataclasses import dataclass

GROUP_ID_PREFIX = "g-"      # a group's id (= its conversation id) starts so; pairs' ids never do (matcher: "c...")


@dataclass(frozen=True)
class Keys:
    prefix: str = "at"

    # ---- control plane: one slot -------------------------------------------------
    @property
    def ctl(self) -> str:
        """Common stem of every control-plane key; scripts build names from it."""
        return f"{self.prefix}:{{ctl}}:"

    def survivor(self, uid: str) -> str:          # hash: profile, capacity, counters
        return f"{self.ctl}sv:{uid}"

    def survivor_offers(self, uid: str) -> str:   # set of a survivor's pending offer ids
        return f"{self.ctl}sv:{uid}:offers"

    def request(self, uid: str) -> str:           # hash: a patient's talk-now request
        return f"{self.ctl}rq:{uid}"

    def offer(self, offer_id: str) -> str:        # hash: a pending offer
        return f"{self.ctl}of:{offer_id}"

    @property
    def queue(self) -> str:                       # zset patient -> enqueue time (oldest first)
        return f"{self.ctl}queue"

    @property
    def offer_deadlines(self) -> str:             # zset offer id -> expiry time
        return f"{self.ctl}offer-deadlines"

    @property
    def presence(self) -> str:                    # zset "uid|conn" -> expiry time
        return f"{self.ctl}presence"

    def user_conns(self, uid: str) -> str:        # set of live connection ids of a user
        return f"{self.ctl}conns:{uid}"

    def user_convs(self, uid: str) -> str:        # set of a user's open conversation ids
        return f"{self.ctl}convs:{uid}"

    def user_history(self, uid: str) -> str:      # set of every conversation id a user was in (erasure)
        return f"{self.ctl}hist:{uid}"

    def peers(self, uid: str) -> str:             # set of survivors a patient has talked with (matcher)
        return f"{self.ctl}peers:{uid}"

    def conversation(self, cid: str) -> str:      # hash: participants, state (matcher's record)
        return f"{self.ctl}cv:{cid}"

    def blocks(self, uid: str) -> str:            # set of users this user may never be matched with
        return f"{self.ctl}blocks:{uid}"

    @property
    def suspended(self) -> str:                   # hash uid -> suspended-until (epoch s, 0 = indefinitely)
        return f"{self.ctl}suspended"

    @property
    def stats(self) -> str:                       # hash of counters and the wait-time average
        return f"{self.ctl}stats"

    @property
    def flags(self) -> str:                       # zset of open flag ids, by priority
        return f"{self.ctl}flags"

    def flag(self, flag_id: str) -> str:          # hash: one flag
        return f"{self.ctl}flag:{flag_id}"

    def conv_flags(self, cid: str) -> str:        # hash flag_id -> status, for one conversation
        return f"{self.ctl}cvflags:{cid}"

    @property
    def audit(self) -> str:                       # stream: append-only audit log
        return f"{self.ctl}audit"

    @property
    def ended(self) -> str:                       # zset conversation id -> end time (retention)
        return f"{self.ctl}ended"

    @property
    def erasures(self) -> str:                    # hash uid -> erased at (epoch s, Redis clock): the erasure
        return f"{self.ctl}erased-at"             # tombstone; only tokens issued later (iat) sign in again

    @property
    def erased_before_tombstones(self) -> str:    # set of user ids erased before tombstones had a time:
        return f"{self.ctl}erased"                # read only, every token of theirs stays refused

    # ---- the matcher's own bookkeeping (matcher/lua) -------------------------------
    def request_declined(self, uid: str) -> str:  # set: survivors this request is never offered again
        return f"{self.ctl}rq:{uid}:no"           # (declined, let lapse or withdrew its offer)

    def request_count(self, uid: str, hour: int) -> str:  # counter: talk-now requests in one hour
        return f"{self.ctl}rqcount:{uid}:{hour}"          # (hour = epoch s // 3600; expires)

    @property
    def relax(self) -> str:                       # zset patient -> end of their same-diagnosis hold
        return f"{self.ctl}relax"

    @property
    def away(self) -> str:                        # zset patient -> when their last connection went
        return f"{self.ctl}away"

    @property
    def cooldowns(self) -> str:                   # zset survivor -> when to look at them again
        return f"{self.ctl}cooldowns"             # (cool-down over, or daily cap lifted at midnight)

    # ---- the matcher's survivor index: who may be offered now (matcher/lua/lib.lua) --
    def rank_dx(self, code: str) -> str:          # zset survivor -> rank score, per diagnosis
        return f"{self.ctl}ix:rank:dx:{code}"

    def rank_se(self, code: str) -> str:          # zset survivor -> rank score, per side effect
        return f"{self.ctl}ix:rank:se:{code}"

    def rank_pair(self, dx: str, se: str) -> str:  # zset survivor -> rank score, per diagnosis and side effect
        return f"{self.ctl}ix:rank:ds:{dx}:{se}"

    def lang_index(self, code: str) -> str:       # set of indexed survivors who speak this language
        return f"{self.ctl}ix:lang:{code}"

    @property
    def wait_index(self) -> str:                  # zset indexed survivor -> time of last match
        return f"{self.ctl}ix:wait"

    # ---- the matcher's request index: who is waiting for an offer now (matcher/lua/lib.lua) --
    def ready_dx(self, code: str) -> str:         # zset waiting, present request -> enqueue time, per diagnosis
        return f"{self.ctl}rx:dx:{code}"

    def ready_se(self, code: str) -> str:         # zset waiting, present request -> enqueue time, per side effect
        return f"{self.ctl}rx:se:{code}"

    def ready_lang(self, code: str) -> str:       # zset waiting, present request -> enqueue time, per language
        return f"{self.ctl}rx:lang:{code}"

    @property
    def scratch(self) -> str:                     # a script's scratch zset, deleted before it returns
        return f"{self.ctl}tmp"

    @property
    def scratch_langs(self) -> str:               # scratch set: a union of language indexes
        return f"{self.ctl}tmp:lang"

    @property
    def scratch_both(self) -> str:                # scratch zset: survivors sharing both of two diagnoses
        return f"{self.ctl}tmp:both"

    # ---- honest waits: who is available at all, and how fast fitting survivors free up (issue 14) --
    def avail_dx(self, code: str) -> str:         # set of available, online survivors (busy or not), per diagnosis
        return f"{self.ctl}av:dx:{code}"

    def avail_se(self, code: str) -> str:         # the same, per side effect
        return f"{self.ctl}av:se:{code}"

    def avail_lang(self, code: str) -> str:       # the same, per language
        return f"{self.ctl}av:lang:{code}"

    @property
    def free_rates(self) -> str:                  # hash "dx=CODE|LANG" / "se=CODE|LANG" -> "count|at|since":
        return f"{self.ctl}free-rates"            # decayed count of survivors becoming free (no user ids)

    @property
    def scratch_fit(self) -> str:                 # scratch set: available survivors fitting a request
        return f"{self.ctl}tmp:fit"

    # ---- talk-later requests, their offers, and contacts (issue 14) ------------------
    def later(self, uid: str) -> str:             # hash: a patient's talk-later request (at most one)
        return f"{self.ctl}lt:{uid}"

    def later_offers(self, uid: str) -> str:      # hash survivor -> offer id: a talk-later request's open offers
        return f"{self.ctl}lt:{uid}:offers"

    def later_declined(self, uid: str) -> str:    # set: survivors who declined this talk-later request
        return f"{self.ctl}lt:{uid}:no"

    @property
    def later_deadlines(self) -> str:             # zset patient -> when their talk-later request expires
        return f"{self.ctl}lt-deadlines"

    @property
    def later_expired(self) -> str:               # hash patient -> request id expired while they were away
        return f"{self.ctl}lt-expired"            # (told in their next welcome, then removed)

    def later_dx(self, code: str) -> str:         # zset open talk-later request -> created, per diagnosis
        return f"{self.ctl}lx:dx:{code}"

    def later_se(self, code: str) -> str:         # the same, per side effect
        return f"{self.ctl}lx:se:{code}"

    def later_lang(self, code: str) -> str:       # the same, per language
        return f"{self.ctl}lx:lang:{code}"

    def later_for(self, uid: str) -> str:         # zset patient -> created: requests addressed to this survivor
        return f"{self.ctl}lx:for:{uid}"          # (talk-later from talk_again, and live talk_again requests)

    def survivor_later(self, uid: str) -> str:    # set of the talk-later offer ids a survivor holds
        return f"{self.ctl}sv:{uid}:later"

    def contact(self, contact_id: str) -> str:    # hash: a kept contact (patient, survivor, names, shared)
        return f"{self.ctl}ct:{contact_id}"

    def user_contacts(self, uid: str) -> str:     # set of a user's contact ids
        return f"{self.ctl}cts:{uid}"

    def keep_in_touch(self, cid: str) -> str:     # set: participants of a conversation who asked to keep in touch
        return f"{self.ctl}kit:{cid}"

    @property
    def screen_queue(self) -> str:                # stream: (conversation, seq) of messages for the model to screen
        return f"{self.ctl}screen"

    # ---- one conversation: one slot each ------------------------------------------
    def conv_meta(self, cid: str) -> str:         # hash: epoch, seq, participants, state
        return f"{self.prefix}:{{c:{cid}}}:meta"

    def conv_log(self, cid: str) -> str:          # stream, entry id = "<seq>-1"
        return f"{self.prefix}:{{c:{cid}}}:log"

    def conv_client_ids(self, cid: str) -> str:   # hash client_id -> seq (idempotent sends)
        return f"{self.prefix}:{{c:{cid}}}:cids"

    # ---- groups (issue 12): a group is a conversation; its membership lives in its own slot ----
    # (chat/lua/group_*.lua decide joins, the waitlist, mutes and removals there, atomically with the
    # capacity; append.lua reads members and mutes in the same step as the message)
    def group_members(self, gid: str) -> str:     # hash uid -> "name<US>role<US>facilitator(0|1)<US>joined seq"
        return f"{self.prefix}:{{c:{gid}}}:members"

    def group_names(self, gid: str) -> str:       # hash name -> uid (names are unique in a group)
        return f"{self.prefix}:{{c:{gid}}}:names"

    def group_waitlist(self, gid: str) -> str:    # zset uid -> ticket (first come, first served)
        return f"{self.prefix}:{{c:{gid}}}:waitlist"

    def group_waiting(self, gid: str) -> str:     # hash uid -> "name<US>role<US>facilitator" of the waitlist
        return f"{self.prefix}:{{c:{gid}}}:waiting"

    def group_muted(self, gid: str) -> str:       # hash uid -> muted until (ms, Redis clock)
        return f"{self.prefix}:{{c:{gid}}}:muted"

    def group_removed(self, gid: str) -> str:     # hash uid -> the name they had: may not rejoin until readmitted
        return f"{self.prefix}:{{c:{gid}}}:removed"

    # the control plane's view of groups: where to find them, and who is in how many
    def group_index(self, kind: str, code: str) -> str:  # zset open group id -> created (ms), per topic
        return f"{self.ctl}gx:{kind}:{code}"

    def user_groups(self, uid: str) -> str:       # set of the groups a user is in or waiting for (the cap;
        return f"{self.ctl}ug:{uid}"              # the group's own slot is the truth, this is its index)

    @property
    def group_seekers(self) -> str:               # zset uid -> since (µs): people waiting for a fitting group
        return f"{self.ctl}gseek"

    @property
    def group_seeker_profiles(self) -> str:       # hash uid -> the profile (JSON) they are waiting with
        return f"{self.ctl}gseek:profiles"

    # ---- limits every gateway shares: one slot per user or per address ---------------
    # Each is used alone (one command or one script on one key), so any tag would be Cluster-safe;
    # a tag per user / address spreads them over the cluster.  On a single node the send bucket also
    # joins the append script (chat/lua/append.lua), so the check and the append are one step.
    def send_bucket(self, uid: str) -> str:       # string "<tokens> <ms>": a user's send token bucket;
        return f"{self.prefix}:{{u:{uid}}}:send"  # expires once it would be full again

    def typing_hint(self, uid: str, cid: str) -> str:  # marker (SET NX PX): a typing hint went out lately
        return f"{self.prefix}:{{u:{uid}}}:typing:{cid}"

    def user_leases(self, uid: str) -> str:       # zset connection lease -> expiry (ms): a user's sockets
        return f"{self.prefix}:{{u:{uid}}}:leases"

    def address_leases(self, address: str) -> str:  # zset connection lease -> expiry (ms): one address's
        return f"{self.prefix}:{{ip:{address}}}:leases"  # sockets

    # ---- pub/sub channels ---------------------------------------------------------
    def user_channel(self, uid: str) -> str:      # everything addressed to one user
        return f"{self.prefix}:u:{uid}"

    def watch_channel(self, cid: str) -> str:     # a conversation's messages, for watching moderators
        return f"{self.prefix}:w:{cid}"

    def conv_live(self, cid: str) -> str:         # shard channel (cluster): a conversation's messages
        return f"{self.prefix}:{{c:{cid}}}:live"

    def conv_watch(self, cid: str) -> str:        # shard channel (cluster): the same, for watching moderators
        return f"{self.prefix}:{{c:{cid}}}:watch"

    @property
    def flag_channel(self) -> str:                # new flags, for moderators' live feed
        return f"{self.prefix}:flags"
