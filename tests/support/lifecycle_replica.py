"""One replica of a presence backend, run as a process of its own (tests/cluster/
test_cluster_lifecycle_scale.py starts two): it consumes the lifecycle events stream in a
consumer group the way SwitchboardKit's consumer does, and keeps the backend's state in Redis.

    python3 lifecycle_replica.py --port P --consumer NAME --dir DIR [--min-idle-ms 1000]

- Own pending entries first (left over from an earlier life with the same name), then
  ``XREADGROUP >`` in batches; every ``--claim-every-ms`` an ``XAUTOCLAIM`` of entries another
  replica read but did not acknowledge for ``--min-idle-ms`` (a dead replica's).
- Each entry is applied by one Lua script, atomically: ``HSETNX backend:ledger <id>`` (the
  idempotency ledger, keyed by the entry id) and, only if the id is new, the effect:
  ``user-online``/``user-offline`` set ``backend:presence[user] = "<gen>:on|off"`` unless a
  later ``gen`` of the user is there already (two replicas handle events in parallel, so one
  user's facts may be applied out of stream order; ``gen`` orders them). ``XACK`` follows
  once per batch, after the whole batch was applied. Delivery from the stream is at least
  once (a replica killed between applying and acking leaves entries that another one claims
  and handles again); the effect is exactly once, through the ledger.
- ``DIR/<consumer>.ledger``: one line per handled entry, written after the script returned:
  ``id type user session time gen applied|dup read|own|claim``.
- Mid-batch pause, so that a test can ``kill -9`` a replica at a known point: while the file
  ``DIR/<consumer>.pause`` exists, the replica reads slowly (0.3 s between reads, so batches
  build up), and the next batch of at least 4 entries is applied up to its middle, then ``DIR/<consumer>.mid-batch`` is written (the ids applied, one a line) and the
  replica waits, unacknowledged, until the pause file is removed (or 60 s)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.resp import Resp, RespError  # noqa: E402 (after the path is set)

STREAM = "switchboard:events"
GROUP = "presence-backend"
LEDGER = "backend:ledger"
PRESENCE = "backend:presence"

APPLY = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then return 0 end
if ARGV[3] ~= '' and (ARGV[2] == 'user-online' or ARGV[2] == 'user-offline') then
  local gen = tonumber(ARGV[4]) or 0
  local current = redis.call('HGET', KEYS[2], ARGV[3])
  if current then
    local seen = tonumber(string.match(current, '^(%d+):'))
    if seen and seen >= gen then return 1 end
  end
  local state = 'off'
  if ARGV[2] == 'user-online' then state = 'on' end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4] .. ':' .. state)
end
return 1
"""


class Replica:
    def __init__(self, port: int, consumer: str, directory: Path, min_idle_ms: int, claim_every_ms: int, batch: int):
        self.redis = Resp(port, timeout=10)
        self.consumer = consumer
        self.dir = directory
        self.min_idle_ms = min_idle_ms
        self.claim_every = claim_every_ms / 1000
        self.batch = batch
        self.ledger = os.open(directory / f"{consumer}.ledger", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pause_file = directory / f"{consumer}.pause"
        self.sha = self.redis.call("SCRIPT", "LOAD", APPLY)
        try:
            self.redis.call("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
        except RespError as e:  # another replica made it
            if "BUSYGROUP" not in str(e):
                raise

    def handle(self, entries, source: str):
        ids = []
        for n, (entry_id, flat) in enumerate(entries):
            if n == len(entries) // 2 and len(entries) >= 4 and self.pause_file.exists():
                self.pause_mid_batch(ids)
            f = dict(zip(flat[::2], flat[1::2]))
            applied = self.redis.call("EVALSHA", self.sha, "2", LEDGER, PRESENCE, entry_id, f.get("type", ""),
                                      f.get("user", ""), f.get("gen", ""), self.consumer)
            line = " ".join([entry_id, f.get("type", "-"), f.get("user") or "-", f.get("session") or "-",
                             f.get("time") or "-", f.get("gen") or "-", "applied" if applied else "dup", source])
            os.write(self.ledger, (line + "\n").encode())
            ids.append(entry_id)
        if ids:
            self.redis.call("XACK", STREAM, GROUP, *ids)

    def pause_mid_batch(self, applied_ids):
        marker = self.dir / f"{self.consumer}.mid-batch"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text("".join(i + "\n" for i in applied_ids))
        tmp.rename(marker)
        until = time.monotonic() + 60
        while self.pause_file.exists() and time.monotonic() < until:
            time.sleep(0.05)  # waiting to be killed

    def own_pending(self):
        cursor = "0"
        while True:
            reply = self.redis.call("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch, "STREAMS", STREAM, cursor)
            entries = [(i, f) for i, f in (reply[0][1] if reply else []) if f is not None]
            if not reply or not reply[0][1]:
                return
            self.handle(entries, "own")
            cursor = reply[0][1][-1][0]

    def claim(self):
        cursor = "0-0"
        while True:
            next_cursor, entries, *_ = self.redis.call("XAUTOCLAIM", STREAM, GROUP, self.consumer, self.min_idle_ms, cursor,
                                                      "COUNT", self.batch)
            entries = [(i, f) for i, f in entries if f is not None]
            if entries:
                self.handle(entries, "claim")
            if next_cursor == "0-0":
                return
            cursor = next_cursor

    def run(self):
        self.own_pending()
        next_claim = time.monotonic() + self.claim_every
        while True:
            if time.monotonic() >= next_claim:
                self.claim()
                next_claim = time.monotonic() + self.claim_every
            if self.pause_file.exists():
                time.sleep(0.3)  # a slow handler: let a batch build up
            reply = self.redis.call("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch, "BLOCK", "100",
                                    "STREAMS", STREAM, ">")
            for _, entries in reply or []:
                self.handle(entries, "read")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--consumer", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--min-idle-ms", type=int, default=1000)
    p.add_argument("--claim-every-ms", type=int, default=500)
    p.add_argument("--batch", type=int, default=50)
    a = p.parse_args()
    Replica(a.port, a.consumer, a.dir, a.min_idle_ms, a.claim_every_ms, a.batch).run()


if __name__ == "__main__":
    main()
