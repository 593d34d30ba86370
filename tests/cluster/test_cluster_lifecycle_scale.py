"""Issue 21 §4, the full-scale lifecycle test: 3 gateways behind haproxy, redis-server, and two
replicas of a presence backend as processes of their own (support/lifecycle_replica.py: a
consumer group on ``switchboard:events``, an idempotency ledger keyed by entry id, the users'
presence ordered by ``gen``, XACK per batch, XAUTOCLAIM of a dead replica's entries).

Clients (worker threads, JWT users with several sessions each) connect and disconnect at
random, through haproxy or straight to a gateway; a tenth of the disconnects are followed
within a second by a reconnect of the same user to another gateway. Each round, with the
clients churning:

1. ``kill -9`` of the gateway holding the most sessions (about a third);
2. a rolling restart of the 3 gateways (SIGTERM, exit 0, start, ready, one at a time);
3. ``kill -9`` of a consumer replica in the middle of a batch (applied in part, not acked),
   then its restart under the same name.

Pass:
- after each fault the backend's online set, and the presence API's sessions of every user,
  equal the clients' own view, with the consumer group caught up (nothing pending), within the
  lease time plus the grace plus a margin (``MARGIN_S``) from the fault;
- every stream entry (XRANGE at the end) is applied exactly once across the replicas' ledgers
  (delivery is at least once: the entries the killed replica applied without acking are
  delivered again, and the ledger turns them into no-ops; the test checks they were);
- the product's facts: one ``connected`` and one ``disconnected`` per session (``node-lost``
  for the killed gateway's; ``CONNECTED`` waits until Redis stored the ``connected`` fact, so
  every session a client had is in the stream, also one connected just before a ``kill -9``), each user's ``user-online``/``user-offline`` alternating in
  stream order with increasing ``gen``, and no ``user-offline`` while one of the user's
  sessions was live.

CI runs a short form (1 round, ~300 live sessions, ~3,000 connects, about 35 s). The soak is one command:
    SWITCHBOARD_SOAK=1 python3 -m pytest tests/cluster/test_cluster_lifecycle_scale.py -s -p no:cacheprovider
(5 rounds, ~600 live sessions, tens of thousands of connects; sizes can be set one by one with
``SWITCHBOARD_CHURN_SESSIONS``, ``_USERS``, ``_ROUNDS``, ``_SEGMENT_SECONDS``, ``_WORKERS``)."""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import requests

from support.lifecycle import GROUP, STREAM, lifecycle_config, token
from support.paths import ARTIFACTS
from support.process import terminate, wait_until
from support.resp import Resp
from support.stompclient import ConnectionClosed, StompClient

SOAK = os.environ.get("SWITCHBOARD_SOAK") == "1"


def _env(name: str, short, soak):
    return type(short)(os.environ.get(f"SWITCHBOARD_CHURN_{name}", soak if SOAK else short))


SESSIONS = _env("SESSIONS", 300, 600)  # live sessions the clients keep around
USERS = _env("USERS", SESSIONS // 2, SESSIONS // 2)  # so about 2 sessions per online user
ROUNDS = _env("ROUNDS", 1, 5)
SEGMENT_S = _env("SEGMENT_SECONDS", 6.0, 30.0)  # churn between two faults
WORKERS = _env("WORKERS", 8, 12)
RECONNECT_SHARE = 0.1  # of the disconnects, followed by a reconnect elsewhere within a second

LEASE_TTL_MS = 2000
GRACE_MS = 500
# From a fault to presence true again: the lease and the grace, a renewal period (0.5 s), the
# reaper's batch, the consumers' poll and claim (min-idle 1 s, every 0.5 s), and slack for a
# debug build on a shared 2-core machine.
MARGIN_S = 6.0
CONVERGE_S = LEASE_TTL_MS / 1000 + GRACE_MS / 1000 + MARGIN_S
# An event's `time` is the gateway's clock when the fact happened, the clients' spans are their
# own clocks around CONNECTED and the close (a disconnect's facts reach Redis a batch after the
# client left): a user-offline may fall this close to a live span's edge.
OFFLINE_MARGIN_S = 0.5

CONFIG = lifecycle_config(LEASE_TTL_MS, 500, GRACE_MS, extra_events="  max-length: 10000000\n")
REPLICA = Path(__file__).resolve().parents[1] / "support" / "lifecycle_replica.py"


@dataclass
class Session:
    sid: str
    user: str
    instance: str
    client: StompClient
    opened: float  # wall clock, when CONNECTED arrived


def shut(c: StompClient):
    """Closes the socket at once (no WebSocket close handshake)."""
    try:
        c.ws.shutdown()
    except Exception:
        pass
    c.closed = True


class Clients:
    """Worker threads opening and closing sessions at random around `target` live ones, and a
    watcher that notices sessions the server closed. ``spans`` is the clients' own record:
    (user, session, instance, opened, ended, how)."""

    def __init__(self, cluster, users: list[str], target: int, workers: int, seed: int):
        self.cluster, self.users, self.target, self.seed = cluster, users, target, seed
        self.lock = threading.Lock()
        self.live: dict[str, Session] = {}
        self.spans: list[tuple[str, str, str, float, float, str]] = []
        self.faults: dict[str, list[float]] = {}  # instance -> when it was killed or stopped
        self.stopping: dict[str, float] = {}  # instance -> since when, until it is back
        self.alive = {0, 1, 2}
        self.reconnects: list[tuple[float, str, str, float]] = []  # due, user, instance to avoid, ended
        # From a disconnect to the reconnect's CONNECTED (longer when the workers were paused
        # meanwhile, while the test waits for presence after a fault).
        self.reconnect_delays: list[float] = []
        self.stats: Counter = Counter()
        self.swept: set[str] = set()  # sessions of a killed gateway
        self.kills: list[tuple[str, float]] = []  # instance, when
        self.running = threading.Event()
        self.stop = threading.Event()
        self.idle = 0
        self.threads = [threading.Thread(target=self.work, args=(k,), daemon=True) for k in range(workers)]
        self.threads.append(threading.Thread(target=self.watch, daemon=True))

    # -- driving ----------------------------------------------------------------
    def start(self):
        self.running.set()
        for t in self.threads:
            t.start()

    def pause(self):
        """Stops the workers after their current step (the watcher goes on)."""
        self.running.clear()
        wait_until(lambda: self.idle == len(self.threads) - 1, 30, what="the workers paused")

    def resume(self):
        self.running.set()

    def finish(self):
        self.running.clear()
        self.stop.set()
        for t in self.threads:
            t.join(15)
        with self.lock:
            left = list(self.live.values())
            self.live.clear()
        for s in left:
            ended = self.bound_end(s, time.time())
            shut(s.client)
            self.spans.append((s.user, s.sid, s.instance, s.opened, ended, "end"))

    def churn(self, seconds: float):
        self.resume()
        until = time.monotonic() + seconds
        wait_until(lambda: time.monotonic() >= until, seconds + 1, 0.1, what="churn")

    # -- faults -------------------------------------------------------------------
    def gateway_going(self, i: int) -> float:
        """Gateway `i` is about to be killed or stopped: no more direct connects to it."""
        now = time.time()
        with self.lock:
            self.alive.discard(i)
            self.stopping[f"gw{i}"] = now
            self.faults.setdefault(f"gw{i}", []).append(now)
        return now

    def gateway_back(self, i: int):
        with self.lock:
            self.alive.add(i)
            self.stopping.pop(f"gw{i}", None)

    def sweep(self, instance: str, at: float, rng: random.Random):
        """The sockets of a killed gateway's sessions are dead: their sessions ended at `at`."""
        with self.lock:
            self.kills.append((instance, at))
            gone = [s for s in self.live.values() if s.instance == instance]
            for s in gone:
                del self.live[s.sid]
                self.swept.add(s.sid)
                self.spans.append((s.user, s.sid, s.instance, s.opened, max(s.opened, at), "killed"))
                if rng.random() < RECONNECT_SHARE:
                    self.reconnects.append((at + rng.uniform(0, 0.5), s.user, instance, at))
        for s in gone:
            shut(s.client)
        return len(gone)

    def by_instance(self) -> Counter:
        with self.lock:
            return Counter(s.instance for s in self.live.values())

    def view(self) -> dict[str, set[str]]:
        """The clients' own view: each user's live sessions."""
        with self.lock:
            out: dict[str, set[str]] = {u: set() for u in self.users}
            for s in self.live.values():
                out[s.user].add(s.sid)
            return out

    def bound_end(self, s: Session, t: float) -> float:
        """When `s` ended at the latest, given `t` (when the client noticed or closed it): not
        after its gateway was killed or stopped (a draining gateway closes its sessions)."""
        ends = [t] + [f for f in self.faults.get(s.instance, []) if f >= s.opened]
        if s.instance in self.stopping:
            ends.append(max(s.opened, self.stopping[s.instance]))
        return min(ends)

    # -- the workers ----------------------------------------------------------------
    def count(self, what: str):
        with self.lock:
            self.stats[what] += 1

    def work(self, k: int):
        rng = random.Random(self.seed * 1000 + k)
        while not self.stop.is_set():
            if not self.running.is_set():
                with self.lock:
                    self.idle += 1
                while not self.running.wait(0.05) and not self.stop.is_set():
                    pass
                with self.lock:
                    self.idle -= 1
                continue
            try:
                self.step(rng)
            except Exception as exc:  # a bug of the test: make it visible
                self.count(f"worker error {type(exc).__name__}: {exc}")

    def step(self, rng: random.Random):
        now = time.time()
        with self.lock:
            due = next((r for r in self.reconnects if r[0] <= now), None)
            if due:
                self.reconnects.remove(due)
            n = len(self.live)
            alive = sorted(self.alive)
        if due:
            _, user, avoid, ended = due
            others = [g for g in alive if f"gw{g}" != avoid] or alive or [0]
            if self.open(user, self.cluster.gw_ws(rng.choice(others)), rng):
                self.count("reconnects")
                self.reconnect_delays.append(time.time() - ended)
            return
        if rng.random() < 0.5 + 0.5 * (self.target - n) / self.target:
            user = rng.choice(self.users)
            url = self.cluster.lb_ws if rng.random() < 0.7 or not alive else self.cluster.gw_ws(rng.choice(alive))
            self.open(user, url, rng)
        else:
            with self.lock:
                if not self.live:
                    return
                s = self.live.pop(rng.choice(list(self.live)))
            self.close(s, rng)

    def open(self, user: str, url: str, rng: random.Random) -> bool:
        try:
            c = StompClient(url, timeout=10)
        except Exception as exc:  # a gateway stopping (haproxy notices within a second) or gone
            via = "haproxy" if url == self.cluster.lb_ws else "direct"
            self.count(f"connect refused via {via}: {type(exc).__name__} {str(exc)[:60]}")
            return False
        try:
            frame = c.connect(headers={"Authorization": f"Bearer {token(user)}"})
        except Exception:
            shut(c)
            self.count("connect failed")
            return False
        s = Session(frame["session"], user, frame["session"].split("-s-")[0], c, time.time())
        try:
            if rng.random() < 0.5:
                c.subscribe(f"/topic/churn.{rng.randrange(8)}", id="0", receipt="r")
        except Exception:  # its gateway is stopping
            shut(c)
            with self.lock:
                self.spans.append((user, s.sid, s.instance, s.opened, self.bound_end(s, time.time()), "lost"))
                self.stats["subscribe failed"] += 1
            return True
        with self.lock:
            self.live[s.sid] = s
            self.stats["connects"] += 1
        return True

    def close(self, s: Session, rng: random.Random):
        ended = time.time()
        if rng.random() < 0.5:
            try:
                s.client.disconnect()
            except Exception:
                pass
        shut(s.client)
        with self.lock:
            self.spans.append((s.user, s.sid, s.instance, s.opened, self.bound_end(s, ended), "closed"))
            self.stats["disconnects"] += 1
            if rng.random() < RECONNECT_SHARE:
                self.reconnects.append((ended + rng.uniform(0, 0.5), s.user, s.instance, ended))

    def watch(self):
        """Sessions whose socket turned readable were closed by the server (nothing else is
        sent to them: no heart-beats, no publishers): an ERROR (drain), a close, an EOF."""
        rng = random.Random(self.seed)
        while not self.stop.is_set():
            with self.lock:
                snapshot = list(self.live.values())
            poller = select.poll()
            by_fd = {}
            for s in snapshot:
                try:
                    fd = s.client.ws.sock.fileno()
                except Exception:
                    continue
                by_fd[fd] = s
                poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            now = time.time()
            for fd, _ in poller.poll(0):
                s = by_fd[fd]
                with self.lock:
                    if self.live.get(s.sid) is not s:
                        continue  # a worker closed it meanwhile
                    del self.live[s.sid]
                    ended = self.bound_end(s, now)
                    expected = ended < now
                    self.spans.append((s.user, s.sid, s.instance, s.opened, ended, "server"))
                    if rng.random() < RECONNECT_SHARE:
                        self.reconnects.append((now + rng.uniform(0, 0.5), s.user, s.instance, now))
                try:
                    frame = s.client.receive(0.5)
                    what = f"{frame.command} {frame.get('message', '')}"
                except ConnectionClosed:
                    what = "closed"
                except Exception as exc:
                    what = type(exc).__name__
                shut(s.client)
                with self.lock:
                    self.stats[("server closed: " if expected else "UNEXPECTED server close: ") + what] += 1
            time.sleep(0.1)  # watcher period


class Replicas:
    """The backend's consumer replicas, processes of their own."""

    def __init__(self, cluster, count: int = 2):
        self.cluster, self.dir = cluster, cluster.dir / "backend"
        self.dir.mkdir()
        self.procs: dict[int, subprocess.Popen] = {}
        for j in range(count):
            self.start(j)

    def start(self, j: int):
        log = open(ARTIFACTS / f"{self.cluster.name}-consumer{j}.log", "ab")
        self.procs[j] = subprocess.Popen([sys.executable, str(REPLICA), "--port", str(self.cluster.redis_port),
                                          "--consumer", f"consumer-{j}", "--dir", str(self.dir)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def kill_mid_batch(self, j: int) -> tuple[float, list[str]]:
        """Asks replica `j` to stop in the middle of its next batch, then kill -9s it there;
        returns when, and the ids it had applied without acking."""
        pause, marker = self.dir / f"consumer-{j}.pause", self.dir / f"consumer-{j}.mid-batch"
        pause.touch()
        wait_until(marker.exists, 30, what=f"consumer-{j} paused mid-batch")
        proc = self.procs.pop(j)
        assert proc.poll() is None, f"consumer-{j} exited {proc.returncode}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed = time.time()
        pause.unlink()
        applied = marker.read_text().split()
        marker.rename(marker.with_suffix(f".mid-batch.{int(killed)}"))
        return killed, applied

    def ledger_lines(self) -> list[list[str]]:
        return [line.split() for f in sorted(self.dir.glob("*.ledger")) for line in f.read_text().splitlines()]

    def check_alive(self):
        dead = {j: p.returncode for j, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"consumer replicas exited: {dead} (see test-artifacts/{self.cluster.name}-consumer*.log)"

    def stop(self):
        for p in self.procs.values():
            terminate(p, timeout=5)


def backend_online(redis: Resp) -> set[str]:
    flat = redis.call("HGETALL", "backend:presence")
    return {u for u, state in zip(flat[::2], flat[1::2]) if state.endswith(":on")}


def group_backlog(redis: Resp) -> tuple[int, bool]:
    """(entries pending in the group, whether the group has read up to the stream's end)."""
    flat = redis.call("XINFO", "STREAM", STREAM)
    stream = dict(zip(flat[::2], flat[1::2]))
    for g in redis.call("XINFO", "GROUPS", STREAM):
        g = dict(zip(g[::2], g[1::2]))
        if g["name"] == GROUP:
            return g["pending"], g["last-delivered-id"] == stream["last-generated-id"]
    return 0, False


def presence_sessions(http: requests.Session, url: str, user: str) -> set[str]:
    r = http.get(f"{url}/api/users/{user}/presence", timeout=5)
    r.raise_for_status()
    return {sid for sids in r.json()["instances"].values() for sid in sids}


def wait_true(clients: Clients, replicas: Replicas, redis: Resp, http: requests.Session, what: str, since: float) -> float:
    """Waits until presence is true again (see the module's Pass); returns the seconds from `since`.
    The deadline counts from the fault or, if later, from now: the clients churned until they
    paused, which a loaded machine can make take seconds."""
    deadline = max(since, time.time()) + CONVERGE_S
    last = "nothing checked"
    while True:
        replicas.check_alive()
        view = clients.view()
        want = {u for u, sids in view.items() if sids}
        online = backend_online(redis)
        pending, read_all = group_backlog(redis)
        if online != want:
            last = f"backend online set: extra {sorted(online - want)[:10]}, missing {sorted(want - online)[:10]}"
        elif pending or not read_all:
            last = f"consumer group behind: {pending} pending, read to the end: {read_all}"
        else:
            wrong = {}
            for u, sids in view.items():
                api = presence_sessions(http, clients.cluster.lb_url, u)
                if api != sids:
                    wrong[u] = {"api only": sorted(api - sids), "clients only": sorted(sids - api)}
                    if len(wrong) >= 5:
                        break
            if not wrong and clients.view() == view:
                took = time.time() - since
                print(f"  {what}: presence true after {took:.2f} s ({len(want)} users online, "
                      f"{sum(len(s) for s in view.values())} sessions)")
                return took
            last = f"presence API differs from the clients: {wrong}"
        if time.time() > deadline:
            raise AssertionError(f"{what}: presence not true {CONVERGE_S:.1f} s after the fault: {last}")
        time.sleep(0.1)  # poll period


def read_stream(redis: Resp) -> list[tuple[str, dict]]:
    out, start = [], "-"
    while True:
        chunk = redis.call("XRANGE", STREAM, start, "+", "COUNT", "5000")
        out += [(i, dict(zip(f[::2], f[1::2]))) for i, f in chunk]
        if len(chunk) < 5000:
            return out
        start = "(" + chunk[-1][0]


def test_churn_at_scale_with_gateway_kill_rolling_restart_and_consumer_kill(cluster_factory):
    cluster = cluster_factory(replicas=0, config_yaml=CONFIG)
    redis = Resp(cluster.redis_port, timeout=10)
    replicas = Replicas(cluster)
    http = requests.Session()
    rng = random.Random(2104)
    users = [f"u{i}" for i in range(USERS)]
    clients = Clients(cluster, users, SESSIONS, WORKERS, seed=rng.randrange(1 << 30))
    redone: list[str] = []  # entry ids a killed replica applied but did not ack
    started = time.monotonic()
    print(f"\nlifecycle churn: {SESSIONS} sessions over {USERS} users, {ROUNDS} round(s) of {SEGMENT_S:.0f} s segments, "
          f"{WORKERS} workers")
    try:
        clients.start()
        wait_until(lambda: len(clients.live) >= SESSIONS * 0.8, 60, 0.1, what="the sessions ramped up")
        for r in range(ROUNDS):
            # 1. kill -9 of the gateway holding the most sessions.
            clients.churn(SEGMENT_S)
            counts = clients.by_instance()
            victim = int(max(("gw0", "gw1", "gw2"), key=lambda g: counts[g])[2:])
            share = counts[f"gw{victim}"] / max(1, sum(counts.values()))
            killed = clients.gateway_going(victim)
            cluster.kill_gateway(victim)
            swept = clients.sweep(f"gw{victim}", killed, rng)
            print(f"round {r}: kill -9 gw{victim} with {swept} sessions ({share:.0%})")
            clients.churn(1.0)  # the reconnects elsewhere, within a second
            clients.pause()
            wait_true(clients, replicas, redis, http, f"kill -9 gw{victim}", killed)
            cluster.start_gateway(victim)
            cluster.wait_ready(victim)
            clients.gateway_back(victim)

            # 2. A rolling restart, the clients churning on.
            clients.churn(SEGMENT_S / 2)
            for i in range(3):
                clients.gateway_going(i)
                code = cluster.stop_one(f"gw{i}")
                assert code == 0, f"gw{i} exited {code} on SIGTERM"
                cluster.start_gateway(i)
                cluster.wait_ready(i)
                clients.gateway_back(i)
            restarted = time.time()
            print(f"round {r}: rolling restart done")
            clients.churn(1.0)
            clients.pause()
            wait_true(clients, replicas, redis, http, "rolling restart", restarted)

            # 3. kill -9 of a consumer replica in the middle of a batch.
            clients.resume()
            j = r % 2
            consumer_killed, applied = replicas.kill_mid_batch(j)
            redone += applied
            print(f"round {r}: kill -9 consumer-{j} mid-batch, {len(applied)} entries applied, not acked")
            clients.churn(1.0)
            clients.pause()
            wait_true(clients, replicas, redis, http, f"kill -9 consumer-{j}", consumer_killed)
            replicas.start(j)
        clients.churn(SEGMENT_S / 2)
        clients.pause()
        clients.finish()
        wait_true(clients, replicas, redis, http, "everyone gone", time.time())
    finally:
        clients.stop.set()
        clients.running.set()
        replicas.stop()
        http.close()
    elapsed = time.monotonic() - started

    stats = dict(clients.stats)
    delays = sorted(clients.reconnect_delays)
    print(f"  {elapsed:.0f} s, {stats.get('connects', 0)} connects, {len(clients.spans)} sessions ended, "
          f"reconnects elsewhere: {len(delays)}"
          + (f" (from the disconnect to CONNECTED: p50 {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s, "
             f"{sum(1 for d in delays if d <= 1) / len(delays):.0%} within 1 s)" if delays else ""))
    for k, v in sorted(stats.items(), key=lambda kv: str(kv[0])):
        print(f"    {k}: {v}")
    assert not [k for k in stats if str(k).startswith("worker error")], stats
    assert stats.get("connects", 0) >= SESSIONS * 2 * ROUNDS, f"too little churn: {stats}"  # speed-bound: a floor only
    assert len(delays) >= 10, "too few reconnects elsewhere"
    # Within a second here on a quiet machine; the bound leaves room for a loaded one.
    assert delays[len(delays) // 2] < 2.5, "the reconnects elsewhere took more than 2.5 s (median)"
    unexpected = {k: v for k, v in stats.items() if str(k).startswith("UNEXPECTED")}
    assert not unexpected, f"the server closed sessions outside the faults: {unexpected}"

    # Every stream entry applied exactly once; the killed replicas' applied-not-acked entries
    # were delivered again and found in the ledger.
    entries = read_stream(redis)
    ids = [i for i, _ in entries]
    lines = replicas.ledger_lines()
    applied = Counter(line[0] for line in lines if line[6] == "applied")
    twice = {i: n for i, n in applied.items() if n > 1}
    assert not twice, f"entries applied more than once: {list(twice.items())[:10]}"
    missing = [i for i in ids if i not in applied]
    assert not missing, f"{len(missing)} stream entries never applied, e.g. {missing[:10]}"
    extra = set(applied) - set(ids)
    assert not extra, f"applied entries not in the stream: {sorted(extra)[:10]}"
    assert redis.call("HLEN", "backend:ledger") == len(ids)
    dups = {line[0] for line in lines if line[6] == "dup"}
    assert redone and set(redone) <= dups, f"applied-but-unacked entries not delivered again: {sorted(set(redone) - dups)[:10]}"
    print(f"  {len(ids)} events, each applied once; {len(dups)} delivered again (no-ops), "
          f"{sum(1 for line in lines if line[7] == 'claim')} claimed from a dead replica")

    # The product's facts: one connected and one disconnected per session, node-lost for the
    # killed gateways' ones.
    per_session: dict[str, Counter] = {}
    reasons: dict[str, str] = {}
    for _, e in entries:
        if e["type"] in ("connected", "disconnected"):
            per_session.setdefault(e["session"], Counter())[e["type"]] += 1
            if e["type"] == "disconnected":
                reasons[e["session"]] = e.get("reason", "")
    wrong = {sid: dict(c) for sid, c in per_session.items() if c["connected"] != 1 or c["disconnected"] != 1}
    assert not wrong, f"sessions without exactly one connected and one disconnected: {list(wrong.items())[:10]}"
    absent = {sid: span for span in clients.spans if (sid := span[1]) not in per_session}
    assert not absent, (f"sessions the clients had (CONNECTED) but the stream lacks (user, session, instance, opened, ended, how): "
                        f"{list(absent.values())[:10]}; kills: {clients.kills}")
    not_lost = {sid: reasons[sid] for sid in clients.swept if reasons[sid] != "node-lost"}
    assert not not_lost, f"a killed gateway's sessions not disconnected as node-lost: {list(not_lost.items())[:10]}"

    # Each user: online and offline alternate in stream order, gen increases, and no
    # user-offline falls inside one of the user's live spans.
    spans: dict[str, list[tuple[float, float]]] = {}
    for user, _, _, opened, ended, _ in clients.spans:
        spans.setdefault(user, []).append((opened, ended))
    by_user: dict[str, list[dict]] = {}
    for _, e in entries:
        if e.get("user"):
            by_user.setdefault(e["user"], []).append(e)
    bad = []
    for user, events in by_user.items():
        gens = [int(e["gen"]) for e in events]
        if any(b <= a for a, b in zip(gens, gens[1:])):
            bad.append(f"{user}: gen not increasing in stream order")
        flips = [e["type"] for e in events if e["type"] in ("user-online", "user-offline")]
        if flips != ["user-online", "user-offline"] * (len(flips) // 2) or len(flips) % 2:
            bad.append(f"{user}: online/offline out of turn: {flips[:8]}")
        for e in events:
            if e["type"] != "user-offline":
                continue
            t = int(e["time"]) / 1000
            for opened, ended in spans.get(user, []):
                if opened + OFFLINE_MARGIN_S < t < ended - OFFLINE_MARGIN_S:
                    bad.append(f"{user} shown offline ({e.get('reason')}) at {t:.3f} while live {opened:.3f}..{ended:.3f}")
    assert not bad, "\n".join(bad[:20])
    offline = sum(1 for _, e in entries if e["type"] == "user-offline")
    print(f"  {len(per_session)} sessions, {offline} user-offline events, none while a session was live")
