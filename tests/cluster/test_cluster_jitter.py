"""The jitter test: Redis with AOF, 3 gateways behind haproxy, clients over many destinations
whose sockets die every few seconds and come back through haproxy resuming from their last
`x-position`, while the cluster suffers a gateway kill -9, a CLIENT KILL of the Pub/Sub
connections, a Redis restart and a rolling restart. Pass: 0 gaps, 0 duplicates, 0 reorders
per client and destination, and every resume recovered.

CI runs a short form. The long form (see docs/recovery.md) is one command:
    SWITCHBOARD_JITTER_SECONDS=300 SWITCHBOARD_JITTER_CLIENTS=300 SWITCHBOARD_JITTER_DESTINATIONS=100 \\
        python3 -m pytest tests/cluster/test_cluster_jitter.py -s
It prints the replay latency (reconnect to first replayed message, and to caught up)."""
import os
import random
import signal
import threading
import time

import requests
import websocket

from support.process import wait_until
from support.stompclient import ConnectionClosed, StompClient

SECONDS = float(os.environ.get("SWITCHBOARD_JITTER_SECONDS", "24"))
CLIENTS = int(os.environ.get("SWITCHBOARD_JITTER_CLIENTS", "36"))
DESTINATIONS = int(os.environ.get("SWITCHBOARD_JITTER_DESTINATIONS", "12"))
PER_CLIENT = 3


class Publishers(threading.Thread):
    """Publishes to every destination in turn through haproxy; the body is the destination's
    own sequence number. `answered[d]` holds the numbers answered 200."""

    def __init__(self, url, destinations):
        super().__init__(daemon=True)
        self.url, self.destinations = url, destinations
        self.answered = {d: [] for d in destinations}
        self.next = {d: 0 for d in destinations}
        self.stop = threading.Event()

    def run(self):
        with requests.Session() as http:
            while not self.stop.is_set():
                for d in self.destinations:
                    seq = self.next[d]
                    self.next[d] += 1
                    try:
                        r = http.post(f"{self.url}/api/notification", json={"topic": d, "message": str(seq)}, timeout=3)
                        if r.status_code == 200:
                            self.answered[d].append(seq)
                    except requests.exceptions.RequestException:
                        time.sleep(0.05)
                time.sleep(0.01)


class JitterClient(threading.Thread):
    """Subscribes to a few destinations; every few seconds its socket dies (no DISCONNECT) and
    it stays away a moment, then reconnects through haproxy and resumes each destination."""

    def __init__(self, url, destinations, period, offline):
        super().__init__(daemon=True)
        self.url, self.destinations, self.period, self.offline = url, destinations, period, offline
        self.position = {d: None for d in destinations}
        self.bodies = {d: [] for d in destinations}
        self.sequences = {d: [] for d in destinations}
        self.not_recovered = []
        self.first_replay = []  # seconds from reconnecting to the first replayed message
        self.caught_up = []  # seconds from reconnecting to the last replayed one
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.drops = 0

    def run(self):
        rng = random.Random()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.session(started, started + rng.uniform(0.5, 1.5) * self.period)
            except (ConnectionClosed, OSError, TimeoutError, websocket.WebSocketException, AssertionError):
                pass
            if not self.stop.is_set():
                time.sleep(self.offline * rng.uniform(0.5, 1.5))

    def session(self, started, until):
        c = StompClient(self.url, timeout=5)
        try:
            c.connect()
            subs = {}  # subscription id -> what its resume looks like
            for n, d in enumerate(self.destinations):
                h = {"x-resume-from": self.position[d]} if self.position[d] else {}
                c.send_frame("SUBSCRIBE", {"destination": d, "id": str(n), "receipt": f"r{n}", **h})
                subs[str(n)] = {"destination": d, "through": None, "resumed": bool(h), "done": not h, "first": False}
            receipts = 0
            while not self.stop.is_set() and time.monotonic() < until:
                try:
                    f = c.receive(0.2)
                except TimeoutError:
                    continue
                now = time.monotonic() - started
                if f.command == "RECEIPT":
                    sub = subs[f["receipt-id"][1:]]
                    d = sub["destination"]
                    if sub["resumed"] and f.get("x-recovered") != "true":
                        self.not_recovered.append((d, self.position[d], dict(f.headers)))
                    sub["through"] = int(f["x-position"].rsplit(":", 1)[1])
                    if sub["resumed"] and int(self.position[d].rsplit(":", 1)[1]) >= sub["through"]:
                        sub["done"] = True  # nothing to replay
                        self.caught_up.append(now)
                    receipts += 1
                    if receipts == len(subs):
                        self.ready.set()
                elif f.command == "MESSAGE":
                    sub = subs[f["subscription"]]
                    d = sub["destination"]
                    seq = int(f["x-position"].rsplit(":", 1)[1])
                    if not sub["done"]:
                        if not sub["first"]:
                            sub["first"] = True
                            self.first_replay.append(now)
                        if sub["through"] is not None and seq >= sub["through"]:
                            sub["done"] = True
                            self.caught_up.append(now)
                    self.bodies[d].append(int(f.text))
                    self.sequences[d].append(f["x-position"])
                    self.position[d] = f["x-position"]
                elif f.command == "ERROR":
                    return  # e.g. draining, or Redis away: reconnect
        finally:
            self.drops += 1
            try:
                c.ws.shutdown()  # the socket dies: no DISCONNECT, no close frame
            except Exception:
                pass


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def test_jitter_no_gap_no_duplicate_no_reorder(cluster_factory):
    cluster = cluster_factory(replicas=0, redis_args=["--appendonly", "yes", "--appendfsync", "always"],
                              gateway_args=("--set", "redis.appendfsync-always=true"))
    destinations = [f"/topic/jitter.{i}" for i in range(DESTINATIONS)]
    rng = random.Random(7)
    period = max(SECONDS / 4, 4.0)
    subs = [JitterClient(cluster.lb_ws, rng.sample(destinations, PER_CLIENT), period=period, offline=period / 8) for _ in range(CLIENTS)]
    for s in subs:
        s.start()
    wait_until(lambda: all(s.ready.is_set() for s in subs), 30, what="every client subscribed")
    pubs = [Publishers(cluster.lb_url, destinations[i::2]) for i in range(2)]
    for p in pubs:
        p.start()
    t0 = time.monotonic()

    def at(fraction):
        wait_until(lambda: time.monotonic() - t0 >= SECONDS * fraction, SECONDS + 5, 0.1)

    at(0.15)
    cluster.kill_gateway(1)
    time.sleep(0.5)
    cluster.start_gateway(1)
    cluster.wait_ready(1)
    at(0.35)
    cluster.redis_cli("CLIENT", "KILL", "TYPE", "pubsub")
    at(0.45)
    cluster.kill_redis()
    time.sleep(0.3)
    cluster.start_redis()
    for i in range(3):
        cluster.wait_ready(i, timeout=30)
    at(0.6)
    for i in range(3):  # rolling restart
        proc = cluster.procs.pop(f"gw{i}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        cluster.start_gateway(i)
        cluster.wait_ready(i)
    at(1.0)
    for p in pubs:
        p.stop.set()
    for p in pubs:
        p.join(10)
    answered = {}
    for p in pubs:
        answered.update(p.answered)
    # Everyone catches up with the last answered publish of each of its destinations.
    last = {d: (a[-1] if a else None) for d, a in answered.items()}
    try:
        wait_until(lambda: all(s.bodies[d] and s.bodies[d][-1] >= last[d] for s in subs for d in s.destinations if last[d] is not None),
                   30, 0.2, what="every client caught up")
    finally:
        for s in subs:
            s.stop.set()
        for s in subs:
            s.join(10)

    problems = []
    total = 0
    for n, s in enumerate(subs):
        for d in s.destinations:
            bodies = s.bodies[d]
            total += len(bodies)
            if not bodies:
                problems.append(f"client {n} {d}: nothing received")
                continue
            dups = len(bodies) - len(set(bodies))
            reorders = sum(1 for a, b in zip(bodies, bodies[1:]) if b <= a)
            expected = [x for x in answered[d] if x >= bodies[0]]
            gaps = sorted(set(expected) - set(bodies))
            seqs = [int(p.rsplit(":", 1)[1]) for p in s.sequences[d]]
            holes = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
            if dups or reorders or gaps or holes:
                problems.append(f"client {n} {d}: {len(gaps)} gaps {gaps[:5]}, {dups} dups, {reorders} reorders, {holes} position holes")
        if s.not_recovered:
            problems.append(f"client {n}: resumes not recovered: {s.not_recovered[:2]}")
    drops = sum(s.drops for s in subs)
    first, caught = [x for s in subs for x in s.first_replay], [x for s in subs for x in s.caught_up]
    print(f"\njitter: {CLIENTS} clients, {DESTINATIONS} destinations, {SECONDS:.0f} s, {sum(len(a) for a in answered.values())} publishes, "
          f"{total} deliveries, {drops} socket drops")
    if first:
        print(f"  replay latency: first replayed p50 {percentile(first, 0.5) * 1000:.0f} ms, p99 {percentile(first, 0.99) * 1000:.0f} ms; "
              f"caught up p50 {percentile(caught, 0.5) * 1000:.0f} ms, p99 {percentile(caught, 0.99) * 1000:.0f} ms ({len(caught)} resumes)")
    assert drops > CLIENTS, "the clients' sockets were not dropped"
    assert not problems, "\n".join(problems[:20])
