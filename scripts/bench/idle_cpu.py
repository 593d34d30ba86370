#!/usr/bin/env python3
"""Server CPU spent on idle subscribed connections (the heart-beat timer's cost).

Connects N subscribers (switchboard-bench subscribe, `--heart-beat` per case), waits, then
reads the server's CPU time over a window in which nothing is published. The server offers
heart-beats 10000,10000 (the default); the subscribers send none, so a case's client
heart-beat is `0,cy`: `0,0` negotiates none, `0,10000` has the server send an EOL every 10 s.

  scripts/bench/idle_cpu.py [--connections 10000] [--seconds 20] [--rounds 2]
                            [--heart-beat 0,0 --heart-beat 0,10000] [--binary PATH ...]

Several --binary alternate round by round (e.g. a build of main beside a change).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as SC  # noqa: E402
import servers as S  # noqa: E402


def one(binary, connections, heart_beat, seconds):
    S.SWITCHBOARD_BIN = binary
    srv = S.Switchboard(extra=("--set", "stomp.heartbeat.send-ms=10000", "--set", "stomp.heartbeat.receive-ms=10000"))
    try:
        g = SC.SubGroup([srv], connections, topics=100, ramp=4000, extra=("--heart-beat", heart_beat))
        g.wait_ready()
        time.sleep(3)
        cpu0, t0 = S.cpu_seconds(srv.pids()), time.time()
        time.sleep(seconds)
        cpu, elapsed = S.cpu_seconds(srv.pids()) - cpu0, time.time() - t0
        rss = S.rss_kb(srv.pids())
        lines = g.stop()
    finally:
        srv.stop()
    return {"binary": binary, "heart_beat": heart_beat, "cpu_ms_per_s": cpu / elapsed * 1000, "rss_kb": rss,
            "connected": sum(l.get("connect_ok", 0) for l in lines),
            "disconnects": sum(l.get("disconnects", 0) for l in lines)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--heart-beat", action="append", dest="heart_beats")
    ap.add_argument("--binary", action="append")
    a = ap.parse_args()
    binaries = a.binary or [S.SWITCHBOARD_BIN]
    print("| binary | client heart-beat | connected | disconnects | server CPU, ms/s | RSS, MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for _ in range(a.rounds):
        for binary in binaries:
            for hb in a.heart_beats or ["0,0", "0,10000"]:
                r = one(binary, a.connections, hb, a.seconds)
                print(f"| {binary} | {hb} | {r['connected']} | {r['disconnects']} | {r['cpu_ms_per_s']:.1f} | "
                      f"{r['rss_kb'] / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
