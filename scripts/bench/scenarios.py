"""Benchmark scenarios (a)–(f). Each function starts the servers it needs, runs
switchboard-bench processes against them and returns a dict of figures.

Sizes come from a preset dict (SMALL runs in seconds, FULL is the documented run); see run-all.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

import aggregate
import servers as S

HERE = os.path.dirname(os.path.abspath(__file__))


def bench_bin():
    for p in (os.environ.get("SWITCHBOARD_BENCH_BIN"),
              os.path.join(S.ROOT, ".build/release/switchboard-bench"),
              "/work/bench-dev/.build/release/switchboard-bench"):
        if p and os.path.exists(p):
            return p
    raise RuntimeError("switchboard-bench not built (SWITCHBOARD_LOADGEN=1 swift build -c release --product switchboard-bench)")


SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]


def log(*a):
    print("[bench]", *a, flush=True)


def target_args(srv, topics):
    a = ["--port", str(srv.port), "--mode", srv.mode, "--ws-path", srv.ws_path]
    if topics:
        a += ["--topics", str(topics), "--topic-prefix", srv.topic_prefix]
    else:
        a += ["--topic", srv.topic_prefix + "0"]
    if srv.login:
        a += ["--login", srv.login[0], "--passcode", srv.login[1], "--vhost", srv.login[2]]
    return a


def publish_args(srv):
    if srv.publish_url:
        return ["--via", "http", "--publish-url", srv.publish_url, "--publish-format", srv.publish_format,
                "--http-connections", "4"]
    return ["--via", "stomp", "--publish-connections", "2"]


class SubGroup:
    """Subscriber processes held open until stop(); returns their merged JSON."""

    def __init__(self, targets, conns, topics=0, ramp=3000, max_per_proc=9000, threads=1, offset=0,
                 sources=SOURCES, handshake_timeout=60, extra=()):
        self.dir = tempfile.mkdtemp(prefix="bench-subs-")
        self.stop_file = os.path.join(self.dir, "stop")
        self.procs = []
        # split conns over targets, and each target's share over processes of <= max_per_proc
        shares = [conns // len(targets) + (1 if i < conns % len(targets) else 0) for i in range(len(targets))]
        idx = offset
        for t, share in zip(targets, shares):
            nproc = max(1, -(-share // max_per_proc))
            for k in range(nproc):
                n = share // nproc + (1 if k < share % nproc else 0)
                if n == 0:
                    continue
                ready = os.path.join(self.dir, f"ready{len(self.procs)}")
                src = ",".join(sources[len(self.procs) % len(sources):] + sources[:len(self.procs) % len(sources)])
                argv = [bench_bin(), "subscribe", *target_args(t, topics), "--connections", str(n),
                        "--index-offset", str(idx), "--ready-file", ready, "--stop-file", self.stop_file,
                        "--hold", "3600", "--export-hist", "--source-addresses", src,
                        "--ramp-per-second", str(max(1, ramp // max(1, nproc * len(targets)))),
                        "--threads", str(threads), "--handshake-timeout", str(handshake_timeout),
                        "--server-pid", ",".join(map(str, t.pids())), *extra]
                err = open(os.path.join(self.dir, f"sub{len(self.procs)}.err"), "w")
                p = subprocess.Popen(S.pinned(argv, "client"), stdout=subprocess.PIPE, stderr=err, text=True)
                self.procs.append((p, ready, err))
                idx += n

    def wait_ready(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(os.path.exists(r) or p.poll() is not None for p, r, _ in self.procs):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        open(self.stop_file, "w").close()
        lines = []
        for p, _, err in self.procs:
            try:
                out, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            err.close()
            for l in out.splitlines():
                if l.startswith("{"):
                    lines.append(json.loads(l))
        return lines


def publish(srv, topics, rate, duration, extra=(), drain=5):
    argv = [bench_bin(), "publish", *target_args(srv, topics), *publish_args(srv), "--rate", str(rate),
            "--duration", str(duration), "--drain", str(drain), "--server-pid", ",".join(map(str, srv.pids())),
            *extra]
    out = subprocess.run(S.pinned(argv, "client"), capture_output=True, text=True, timeout=duration * 4 + 120)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError("publisher failed: " + out.stderr[-2000:])
    return lines[0]


def one_step(sub_targets, pub_target, conns, topics, rate, duration, ramp=3000, settle=1.5):
    g = SubGroup(sub_targets, conns, topics=topics, ramp=ramp)
    g.wait_ready()
    pids = sorted({pid for t in list(sub_targets) + [pub_target] for pid in t.pids()})
    cpu0 = S.cpu_seconds(pids)
    p = publish(pub_target, topics, rate, duration)
    time.sleep(settle)
    cpu = S.cpu_seconds(pids) - cpu0
    subs = g.stop()
    agg = aggregate.merge(subs + [p])
    # Server CPU (all instances) per delivery over the publishing window: what the server
    # spends, whatever the generator sharing the box takes.
    agg["server_cpu_us_per_delivery"] = round(cpu * 1e6 / agg["deliveries"], 3) if agg.get("deliveries") else None
    agg["target_rate"] = rate
    agg["target_deliveries_per_sec"] = rate * conns // max(1, topics)
    agg["publish_rate"] = p.get("publish_rate")
    agg["publisher_errors"] = p.get("responses_failed", 0) + p.get("errors", 0)
    return agg


def zero_loss(r, rate):
    return (r.get("lost", 1) == 0 and r.get("disconnects", 0) == 0 and r.get("publisher_errors", 0) == 0
            and r.get("connect_failed", 0) == 0 and (r.get("publish_rate") or 0) >= 0.95 * rate
            and r.get("duplicates", 0) == 0
            # sustained: the subscribers kept up (otherwise the backlog only shows up as latency)
            and (r.get("deliveries_per_sec") or 0) >= 0.9 * r.get("target_deliveries_per_sec", 0))


# ---------------------------------------------------------------- servers for a scenario

def start(name, **kw):
    return S.SERVERS[name](**kw)


# ---------------------------------------------------------------- (a) idle RSS

def idle(name, size):
    n, stages = size["idle_conns"], size["idle_stages"]
    srv = start(name)
    try:
        time.sleep(1)
        base = S.rss_kb(srv.pids())
        curve = [(0, base)]
        groups = []
        per = n // stages
        ok = failed = 0
        for i in range(stages):
            g = SubGroup([srv], per, topics=size.get("idle_topics", 0), ramp=size["idle_ramp"], offset=i * per,
                         max_per_proc=per)
            g.wait_ready()
            groups.append(g)
            time.sleep(1.0)
            curve.append(((i + 1) * per, S.rss_kb(srv.pids())))
            log(f"  {name} idle: {(i + 1) * per} connections, server RSS {curve[-1][1]} kB")
        lines = []
        for g in groups:
            lines += g.stop()
        agg = aggregate.merge(lines)
        ok, failed = agg.get("connect_ok", 0), agg.get("connect_failed", 0)
        rss_peak = curve[-1][1]
        return {"connections": n, "connect_ok": ok, "connect_failed": failed, "rss_base_kb": base,
                "rss_kb": rss_peak, "rss_per_conn_kb": (rss_peak - base) / max(1, ok), "curve": curve,
                "processes": len(lines)}
    finally:
        srv.stop()


# ---------------------------------------------------------------- (b) fan-out

def fanout(name, size):
    subs, steps, dur = size["fanout_subs"], size["fanout_rates"], size["fanout_step_s"]
    srv = start(name)
    results = []
    try:
        best = None
        fails = 0
        for rate in steps:
            r = one_step([srv], srv, subs, 0, rate, dur)
            r["zero_loss"] = zero_loss(r, rate)
            if hasattr(srv, "busy_state"):
                # loops in busy mode at the end of the step, switches since the server started
                r["busy_loops"], r["busy_switches"] = srv.busy_state() or (None, None)
            results.append(r)
            log(f"  {name} fanout rate {rate}/s x {subs}: {r.get('deliveries_per_sec', 0):.0f} deliveries/s "
                f"p99 {r['latency_us'].get('p99')} us lost {r.get('lost')} zero_loss={r['zero_loss']} "
                f"server CPU {r.get('server_cpu_us_per_delivery')} us/delivery")
            if r["zero_loss"]:
                best = max(best or 0, r.get("deliveries_per_sec", 0))
                fails = 0
            else:
                fails += 1
                if fails >= 2:
                    break
        at100k = [r for r in results if r["target_deliveries_per_sec"] == 100_000]
        return {"max_zero_loss_deliveries_per_sec": best or 0,
                "server_cpu_us_per_delivery_at_100k": at100k[0].get("server_cpu_us_per_delivery") if at100k else None,
                "p99_at_100k_us": at100k[0]["latency_us"].get("p99") if at100k else None,
                "p99_at_100k_zero_loss": at100k[0]["zero_loss"] if at100k else None,
                "steps": [{k: r.get(k) for k in ("target_rate", "target_deliveries_per_sec", "deliveries_per_sec",
                                                  "latency_us", "lost", "disconnects", "zero_loss", "publish_rate",
                                                  "server_rss_kb", "server_cpu_us_per_delivery", "busy_loops", "busy_switches")}
                           for r in results]}
    finally:
        srv.stop()


# ---------------------------------------------------------------- (c) many topics

def many_topics(name, size):
    subs, topics, rate, dur = size["topics_subs"], size["topics_count"], size["topics_rate"], size["topics_step_s"]
    srv = start(name)
    try:
        r = one_step([srv], srv, subs, topics, rate, dur, ramp=size["idle_ramp"])
        r["zero_loss"] = zero_loss(r, rate)
        log(f"  {name} topics: {r.get('deliveries_per_sec', 0):.0f} deliveries/s p99 {r['latency_us'].get('p99')} us lost {r.get('lost')}")
        return {"deliveries_per_sec": r.get("deliveries_per_sec"), "p99_us": r["latency_us"].get("p99"),
                "lost": r.get("lost"), "zero_loss": r["zero_loss"], "connect_ok": r.get("connect_ok"),
                "server_rss_kb": r.get("server_rss_kb"), "target_deliveries_per_sec": rate * subs / topics}
    finally:
        srv.stop()


# ---------------------------------------------------------------- (d) cross-instance

def cross(name, size):
    if name == "rabbitmq":
        return {"skipped": "single node (no cluster set up here)"}
    redis = S.Redis()
    insts = []
    try:
        for _ in range(3):
            insts.append(start(name, redis_url=redis.url))
        time.sleep(1)
        subs, steps, dur = size["cross_subs"], size["cross_rates"], size["fanout_step_s"]
        results = []
        best = None
        for rate in steps:
            r = one_step(insts, insts[0], subs, 0, rate, dur)
            r["zero_loss"] = zero_loss(r, rate)
            results.append(r)
            log(f"  {name} cross rate {rate}/s x {subs}: {r.get('deliveries_per_sec', 0):.0f} deliveries/s "
                f"p99 {r['latency_us'].get('p99')} us lost {r.get('lost')} zero_loss={r['zero_loss']}")
            if r["zero_loss"]:
                best = max(best or 0, r.get("deliveries_per_sec", 0))
            else:
                break
        at100k = [r for r in results if r["target_deliveries_per_sec"] == 100_000]
        return {"max_zero_loss_deliveries_per_sec": best or 0,
                "server_cpu_us_per_delivery_at_100k": at100k[0].get("server_cpu_us_per_delivery") if at100k else None,
                "p99_at_100k_us": at100k[0]["latency_us"].get("p99") if at100k else None,
                "steps": [{k: r.get(k) for k in ("target_rate", "target_deliveries_per_sec", "deliveries_per_sec",
                                                  "latency_us", "lost", "zero_loss")} for r in results]}
    finally:
        for i in insts:
            i.stop()
        redis.stop()


# ---------------------------------------------------------------- (e) inbound SEND + receipt

# The per-connection frame limit (default 2,000/s) is raised: 16 connections carry up to 80k/s.
ROUTE_YAML = """limits:
  frames-per-second: 20000
routes:
  names: [bench]
  bench:
    destination: /app/bench
    type: redis-stream
    stream: BENCH_INBOUND
    max-length: 100000
"""


def inbound(name, size):
    if name == "nchan":
        return {"skipped": "nchan has no client→server message path"}
    redis = None
    if name.startswith("switchboard"):
        redis = S.Redis(replica=getattr(S.SERVERS[name], "redis_replica", False))
        cfg = os.path.join(tempfile.mkdtemp(prefix="bench-cfg-"), "bench.yaml")
        with open(cfg, "w") as f:
            f.write(ROUTE_YAML)
        srv = start(name, redis_url=redis.url, config=cfg)
        dest = "/app/bench"
    else:
        srv = start(name)
        dest = "/queue/bench-inbound"
    try:
        best = None
        steps = []
        for rate in size["inbound_rates"]:
            extra = ["--via", "stomp", "--receipts", "--send-destination", dest,
                     "--publish-connections", str(size["inbound_conns"])]
            p = publish(srv, 0, rate, size["inbound_step_s"], extra=extra, drain=5)
            ok = p.get("receipts", 0) >= p.get("published", 1) and p.get("errors", 0) == 0 \
                and p.get("publish_rate", 0) >= 0.95 * rate
            steps.append({"target_rate": rate, "receipts_per_sec": p.get("receipts_per_sec"),
                          "receipt_latency_us": p.get("receipt_latency_us"), "ok": ok,
                          "errors": p.get("error_samples")})
            log(f"  {name} inbound {rate}/s: {p.get('receipts_per_sec')} receipts/s "
                f"p99 {p.get('receipt_latency_us', {}).get('p99')} us ok={ok}")
            if ok:
                best = max(best or 0, p.get("receipts_per_sec", 0))
            else:
                break
        return {"max_receipted_sends_per_sec": best or 0, "steps": steps}
    finally:
        srv.stop()
        if redis:
            redis.stop()


# ---------------------------------------------------------------- (f) connect storm

def storm_grid(srv, size, offset, extra=()):
    """Steps up the connect rate until connections fail; returns (best rate, steps, next offset)."""
    best = None
    steps = []
    for rate in size["storm_rates"]:
        n = min(int(rate * size["storm_seconds"]), size["storm_max_conns"])
        cpu0 = S.cpu_seconds(srv.pids())
        g = SubGroup([srv], n, ramp=rate, max_per_proc=max(1, n // 2 + 1), offset=offset,
                     handshake_timeout=10, extra=extra)
        g.wait_ready()
        # Server CPU per connection set up: independent of the generator sharing the box.
        cpu_us = (S.cpu_seconds(srv.pids()) - cpu0) * 1e6 / max(1, n)
        lines = g.stop()
        agg = aggregate.merge(lines)
        offset += n
        steps.append({"target": rate, "connections": n, "connect_ok": agg.get("connect_ok"),
                      "connect_failed": agg.get("connect_failed"), "connect_rate": agg.get("connect_rate"),
                      "connect_latency_us": agg.get("connect_latency_us"), "errors": agg.get("error_samples"),
                      "server_cpu_us_per_connect": round(cpu_us, 1), "generator_args": list(extra)})
        log(f"  {srv.name} storm{' ' + ' '.join(extra) if extra else ''} target {rate}/s: "
            f"{agg.get('connect_rate', 0):.0f} connects/s ok {agg.get('connect_ok')} "
            f"failed {agg.get('connect_failed')} p99 {agg.get('connect_latency_us', {}).get('p99')} us "
            f"server CPU {cpu_us:.0f} us/connect")
        if agg.get("connect_failed", 0) == 0 and agg.get("connect_ok", 0) == n:
            best = max(best or 0, agg.get("connect_rate", 0))
        else:
            break
        time.sleep(2)   # let the closed connections go
    return best or 0, steps, offset


def storm(name, size):
    """A subscriber is ready once subscribed. STOMP clients send SUBSCRIBE right behind CONNECT
    (as stompit and most STOMP libraries may; frames are processed in order), so a STOMP
    subscriber costs two round trips (upgrade, CONNECT+SUBSCRIBE) against nchan's one; the
    figure with SUBSCRIBE sent only after CONNECTED (three round trips, what stomp.js does) is
    recorded beside it."""
    srv = start(name)
    try:
        stomp = srv.mode == "stomp"
        best, steps, offset = storm_grid(srv, size, 0, extra=("--pipeline-subscribe",) if stomp else ())
        # Server CPU per connect at the largest step (the most connections, the least noise).
        out = {"max_connects_per_sec": best, "steps": steps,
               "server_cpu_us_per_connect": steps[-1]["server_cpu_us_per_connect"] if steps else None}
        if stomp:
            time.sleep(2)
            waiting, wsteps, _ = storm_grid(srv, size, offset)
            out["max_connects_per_sec_subscribe_after_connected"] = waiting
            out["steps_subscribe_after_connected"] = wsteps
        return out
    finally:
        srv.stop()


SCENARIOS = {"a": ("idle", idle), "b": ("fanout", fanout), "c": ("topics", many_topics),
             "d": ("cross", cross), "e": ("inbound", inbound), "f": ("storm", storm)}
