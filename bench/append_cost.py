"""Redis-side cost of one chat append: an old append.lua against today's (with the send bucket).

Each round runs N appends of one script on a private redis-server (append-only, as deployed) and
reads ``INFO commandstats`` (µs per EVALSHA); the two scripts alternate, four rounds each.
``--old FILE``: the old script (e.g. ``git show c8719f6:chat/lua/append.lua > /tmp/old.lua``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from core.keys import Keys  # noqa: E402
from core.scripts import load_source  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

TEXT = "how are you feeling today after the second round, any better with the nausea?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="the old append.lua (no send bucket)")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    server = RedisServer(appendonly=True).start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        k = Keys("m")
        shas = {"old": r.script_load(Path(args.old).read_text()),
                "new": r.script_load(load_source("chat", "append.lua"))}
        out: dict[str, list[float]] = {"old": [], "new": []}
        for rnd in range(4):
            for which in ("old", "new") if rnd % 2 == 0 else ("new", "old"):
                cid = f"{which}{rnd}"
                r.hset(k.conv_meta(cid), mapping={"epoch": "e", "state": "open", "patient": "p", "survivor": "s"})
                keys = [k.conv_meta(cid), k.conv_log(cid), k.conv_client_ids(cid)]
                base = [cid, "p", "Pat", "patient", "", TEXT, "", "", "m:u:", "m:w:" + cid]
                if which == "new":      # limits as high as the relay benchmark's: every call takes a token
                    keys += [k.group_members(cid), k.group_muted(cid), k.send_bucket("p")]
                    base += ["", "", "100000.0", "100000"]
                r.config_resetstat()
                for i in range(0, args.calls, 500):
                    pipe = r.pipeline(transaction=False)
                    for j in range(i, min(i + 500, args.calls)):
                        call = list(base)
                        call[4] = f"c{j}"
                        pipe.evalsha(shas[which], len(keys), *keys, *call)
                    pipe.execute()
                out[which].append(float(r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]))
                r.delete(*keys)
        for which in ("old", "new"):
            print(f"{which}: µs per call {out[which]}, mean {statistics.mean(out[which]):.2f}")
        print(f"new / old: {statistics.mean(out['new']) / statistics.mean(out['old']):.3f}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
