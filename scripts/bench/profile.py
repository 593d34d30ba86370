#!/usr/bin/env python3
"""Sample Switchboard's CPU (perf record -e cpu-clock -g: hardware counters are not
available on this VM) during one fan-out step and one inbound step, and print the top
symbols. apt-get install linux-perf first.

  scripts/bench/profile.py [--fanout-subs 1000 --fanout-rate 100] [--inbound-rate 20000] [--seconds 6]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aggregate  # noqa: E402
import scenarios as SC  # noqa: E402
import servers as S  # noqa: E402


def perf_top(data, n=25):
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none"],
                         capture_output=True, text=True).stdout
    rows = [l for l in out.splitlines() if "%" in l and not l.startswith("#")]
    return "\n".join(r[:160] for r in rows[:n])


def record(pid, seconds, data):
    return subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid), "-o", data,
                             "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fanout-subs", type=int, default=1000)
    ap.add_argument("--fanout-rate", type=int, default=100)
    ap.add_argument("--inbound-rate", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--storm-rate", type=int, default=4000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-perf-")

    srv = S.Switchboard()
    g = SC.SubGroup([srv], a.fanout_subs, ramp=3000)
    g.wait_ready()
    pr = record(srv.pids()[0], a.seconds, os.path.join(d, "fanout.data"))
    p = SC.publish(srv, 0, a.fanout_rate, a.seconds)
    pr.wait()
    time.sleep(1)
    r = aggregate.merge(g.stop() + [p])
    srv.stop()
    print(f"== fan-out {a.fanout_subs} subs x {a.fanout_rate}/s: {r.get('deliveries_per_sec', 0):.0f} deliveries/s, "
          f"p99 {r['latency_us'].get('p99')} us, lost {r.get('lost')}")
    print(perf_top(os.path.join(d, "fanout.data")))

    srv = S.Switchboard()
    pr = record(srv.pids()[0], 4, os.path.join(d, "storm.data"))
    g = SC.SubGroup([srv], a.storm_rate * 3, ramp=a.storm_rate, max_per_proc=a.storm_rate * 3 // 2 + 1, handshake_timeout=10)
    g.wait_ready()
    r = aggregate.merge(g.stop())
    pr.wait()
    srv.stop()
    print(f"\n== connect storm {a.storm_rate}/s offered: {r.get('connect_rate', 0):.0f} connects/s, ok {r.get('connect_ok')} "
          f"failed {r.get('connect_failed')}")
    print(perf_top(os.path.join(d, "storm.data")))

    redis = S.Redis()
    cfg = os.path.join(d, "bench.yaml")
    open(cfg, "w").write(SC.ROUTE_YAML)
    srv = S.Switchboard(redis_url=redis.url, config=cfg)
    pr = record(srv.pids()[0], a.seconds, os.path.join(d, "inbound.data"))
    p = SC.publish(srv, 0, a.inbound_rate, a.seconds,
                   extra=["--via", "stomp", "--receipts", "--send-destination", "/app/bench", "--publish-connections", "16"])
    pr.wait()
    srv.stop()
    redis.stop()
    print(f"\n== inbound {a.inbound_rate}/s: {p.get('receipts_per_sec')} receipts/s, "
          f"receipt p99 {p.get('receipt_latency_us', {}).get('p99')} us")
    print(perf_top(os.path.join(d, "inbound.data")))


if __name__ == "__main__":
    main()
