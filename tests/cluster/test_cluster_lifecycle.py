"""Presence and lifecycle events with real processes: 3 gateways behind haproxy, redis-server,
and a consumer group of two consumers reading ``switchboard:events``. Checks the events and
presence across gateways, that a ``kill -9`` of a gateway turns its sessions into
``disconnected(node-lost)`` and ``user-offline`` once, within the lease time, that a user with
a session elsewhere is never shown offline, and that every event id is processed once."""
from __future__ import annotations

import random
import signal
import shutil
import subprocess
import time

import pytest
import requests

from support.cluster import Cluster, stop_cluster
from support.paths import ARTIFACTS, REPO
from support.gateway import metric
from support.lifecycle import CONFIG, LEASE_TTL_MS, Backend, connect
from support.process import wait_until
from support.stompclient import StompClient


@pytest.fixture
def cluster():
    c = Cluster("lifecycle", replicas=0, config_yaml=CONFIG)
    yield c
    stop_cluster(c)


def test_events_and_presence_across_gateways(cluster):
    backend = Backend(cluster.redis_port)
    a0 = connect(cluster.gw_ws(0), "alice")
    a0.subscribe("/topic/room", receipt="r")
    b1 = connect(cluster.gw_ws(1), "bob")
    b1.subscribe("/topic/room", receipt="r")
    a2 = connect(cluster.lb_ws, "alice")
    anon = connect(cluster.gw_ws(2), None)
    backend.wait_for("connected events", lambda: len(backend.matching(type="connected")) == 4)
    backend.wait_for("subscribed events", lambda: len(backend.matching(type="subscribed")) == 2)
    assert backend.online == {"alice", "bob"}
    assert len(backend.matching(type="user-online", user="alice")) == 1
    assert len(backend.matching(type="destination-occupied", destination="/topic/room")) == 1
    assert {e["instance"] for e in backend.matching(type="connected", user="bob")} == {"gw1"}
    # The presence API, through haproxy (any gateway answers for all of them).
    room = requests.get(f"{cluster.lb_url}/api/presence/topic/room", timeout=5)
    assert room.status_code == 200, room.text
    assert room.json() == {"destination": "/topic/room", "subscribers": 2, "users": ["alice", "bob"]}
    alice = requests.get(f"{cluster.lb_url}/api/users/alice/presence", timeout=5).json()
    assert alice["online"] is True
    expected: dict[str, list[str]] = {}
    for c in (a0, a2):
        expected.setdefault(Cluster.instance_of(c), []).append(c.connected_frame["session"])
    assert alice["instances"] == {k: sorted(v) for k, v in expected.items()}
    bad = requests.get(f"{cluster.lb_url}/api/presence/app/greet", timeout=5)
    assert bad.status_code == 400 and bad.json()["field"] == "destination"
    # alice leaves gw0: she still has a session, so she stays online.
    a0.disconnect()
    a0.close()
    backend.wait_for("alice's disconnect", lambda: backend.matching(type="disconnected", user="alice", reason="client"))
    assert "alice" in backend.online and not backend.matching(type="user-offline")
    # bob's unsubscribe empties the destination.
    b1.unsubscribe("0", receipt="u")
    backend.wait_for("destination vacated", lambda: backend.matching(type="destination-vacated", destination="/topic/room"))
    for c in (b1, a2, anon):
        c.close()
    backend.wait_for("everyone offline", lambda: len(backend.matching(type="disconnected")) == 4 and not backend.online)
    assert len(backend.matching(type="user-offline", user="alice")) == 1
    # One user's generations increase in stream order.
    gens = [int(e["gen"]) for e in backend.events if e.get("user") == "alice"]
    assert gens == sorted(gens) and len(set(gens)) == len(gens)
    backend.assert_each_once()


def test_kill_9_turns_a_gateways_sessions_into_node_lost_once(cluster):
    backend = Backend(cluster.redis_port)
    victims = [connect(cluster.gw_ws(0), f"u{i}") for i in range(10)]
    for i, c in enumerate(victims):
        c.subscribe("/topic/doomed" if i % 2 else "/topic/shared", receipt="r")
    # u0..u2 have a second session on another gateway: they must never be shown offline.
    survivors = [connect(cluster.gw_ws(1 + i % 2), f"u{i}") for i in range(3)]
    survivors[0].subscribe("/topic/shared", receipt="r")
    backend.wait_for("connected", lambda: len(backend.matching(type="connected")) == 13)
    backend.wait_for("subscribed", lambda: len(backend.matching(type="subscribed")) == 11)
    assert backend.online == {f"u{i}" for i in range(10)}
    killed_at = time.monotonic()
    cluster.kill_gateway(0)
    expected_offline = {f"u{i}" for i in range(3, 10)}
    backend.wait_for(
        "node-lost events", lambda: len(backend.matching(type="disconnected", reason="node-lost")) == 10
        and {e["user"] for e in backend.matching(type="user-offline")} == expected_offline,
        timeout=LEASE_TTL_MS / 1000 + 8)  # the lease time, plus renewals and polling, with slack for a loaded machine
    took = time.monotonic() - killed_at
    lost = backend.matching(type="disconnected", reason="node-lost")
    assert {e["instance"] for e in lost} == {"gw0"}
    assert sorted(e["user"] for e in lost) == sorted(f"u{i}" for i in range(10))
    assert len(backend.matching(type="destination-vacated", destination="/topic/doomed")) == 1
    assert not backend.matching(type="destination-vacated", destination="/topic/shared")
    # Nothing more follows: a second reaper (the third gateway) found nothing to reap.
    backend.wait_for("a quiet second", lambda: time.monotonic() - killed_at > took + 1.5)
    assert len(backend.matching(type="disconnected", reason="node-lost")) == 10
    assert len(backend.matching(type="user-offline")) == 7
    assert backend.online == {"u0", "u1", "u2"}
    assert not any(e["user"] in {"u0", "u1", "u2"} for e in backend.matching(type="user-offline"))
    backend.assert_each_once()
    for c in survivors:
        c.close()
    backend.wait_for("survivors offline", lambda: not backend.online)
    backend.assert_each_once()


def test_graceful_stop_writes_drain(cluster):
    backend = Backend(cluster.redis_port)
    c = connect(cluster.gw_ws(2), "dora")
    c.subscribe("/topic/drained", receipt="r")
    backend.wait_for("connected", lambda: backend.matching(type="subscribed", user="dora"))
    codes = {"gw2": cluster.stop_one("gw2")}
    assert codes == {"gw2": 0}
    backend.wait_for("drain", lambda: backend.matching(type="user-offline", user="dora", reason="drain"))
    assert [e["reason"] for e in backend.matching(type="disconnected")] == ["drain"]
    assert len(backend.matching(type="destination-vacated", destination="/topic/drained")) == 1
    backend.assert_each_once()


def test_a_frozen_gateway_is_reaped_then_closes_its_sessions_when_it_wakes(cluster):
    """A gateway stopped (SIGSTOP: a long pause, a partition) past its lease is reaped like a
    dead one; when it runs again it finds its lease lost and closes its sessions, which
    reconnect and are online again: presence ends up matching the live sessions."""
    backend = Backend(cluster.redis_port)
    frozen = connect(cluster.gw_ws(0), "fred")
    frozen.subscribe("/topic/frozen", receipt="r")
    backend.wait_for("connected", lambda: backend.matching(type="subscribed", user="fred"))
    proc = cluster.procs["gw0"]
    proc.send_signal(signal.SIGSTOP)
    try:
        backend.wait_for("node-lost", lambda: backend.matching(type="user-offline", user="fred", reason="node-lost"),
                         timeout=LEASE_TTL_MS / 1000 + 8)
    finally:
        proc.send_signal(signal.SIGCONT)
    error = frozen.expect_error("this instance lost its presence lease in Redis, reconnect", timeout=10)
    assert error.command == "ERROR"
    # Counted as a lost lease, not as a shutdown.
    text = requests.get(f"{cluster.gw_url(0)}/metrics", timeout=5).text
    assert metric(text, "switchboard_session_errors_total", kind="lease_lost") == 1
    assert metric(text, "switchboard_session_errors_total", kind="shutdown") == 0
    again = connect(cluster.gw_ws(0), "fred")
    backend.wait_for("online again", lambda: len(backend.matching(type="user-online", user="fred")) == 2)
    assert backend.online == {"fred"}
    presence = requests.get(f"{cluster.gw_url(1)}/api/users/fred/presence", timeout=5).json()
    assert presence["instances"] == {"gw0": [again.connected_frame["session"]]}
    # The old session's own disconnect was ignored: it had been reaped already.
    assert len(backend.matching(type="disconnected", user="fred")) == 1
    again.close()
    backend.wait_for("offline", lambda: not backend.online)
    backend.assert_each_once()


def test_churn_with_reconnects_and_a_kill_keeps_presence_true(cluster):
    """Random connects and disconnects over 3 gateways, a tenth of the disconnects followed at
    once by a reconnect to another gateway, and a ``kill -9`` of one gateway halfway: the
    consumers' online set ends equal to the clients' own view, no event is handled twice, and
    no ``user-offline`` falls inside a span where one of the user's sessions was live."""
    rng = random.Random(21)
    backend = Backend(cluster.redis_port)
    users = [f"c{i}" for i in range(30)]
    live: list[tuple[str, int, StompClient, float]] = []  # user, gateway, client, opened (wall clock)
    spans: dict[str, list[tuple[float, float]]] = {u: [] for u in users}
    alive_gateways = [0, 1, 2]

    def open_session(user: str, gateway: int):
        c = connect(cluster.gw_ws(gateway), user)
        if rng.random() < 0.5:
            c.subscribe(f"/topic/churn.{rng.randrange(3)}", receipt="r")
        live.append((user, gateway, c, time.time()))

    def close_session(index: int, how: str):
        user, gateway, c, opened = live.pop(index)
        if how == "disconnect":
            c.disconnect()
        c.close()
        spans[user].append((opened, time.time()))

    for step in range(240):
        if step == 120:
            cluster.kill_gateway(0)
            killed = time.time()
            alive_gateways.remove(0)
            for i in reversed(range(len(live))):
                if live[i][1] == 0:
                    user, _, c, opened = live.pop(i)
                    spans[user].append((opened, killed))
                    c.close()
        if not live or rng.random() < 0.55:
            open_session(rng.choice(users), rng.choice(alive_gateways))
        else:
            index = rng.randrange(len(live))
            user, gateway = live[index][0], live[index][1]
            close_session(index, rng.choice(["disconnect", "close"]))
            if rng.random() < 0.1:  # back at once, elsewhere
                open_session(user, rng.choice([g for g in alive_gateways if g != gateway] or alive_gateways))
        if step % 20 == 0:
            backend.poll()
    expected = {u for u, _, _, _ in live}
    backend.wait_for("online set equals the clients' view", lambda: backend.online == expected,
                     timeout=LEASE_TTL_MS / 1000 + 10)
    backend.assert_each_once()
    margin = 0.5
    for e in backend.matching(type="user-offline"):
        t = int(e["time"]) / 1000
        for opened, closed in spans[e["user"]] + [(o, float("inf")) for u, _, _, o in live if u == e["user"]]:
            assert not (opened + margin < t < closed - margin), f"{e['user']} shown offline at {t} while live {opened}..{closed}"
    for _, _, c, _ in live:
        c.close()


def test_a_gateway_restarted_with_the_same_id_has_its_old_sessions_reaped(cluster):
    """kill -9, then a restart with the same ``instance.id`` before the lease expires (a
    supervisor's restart): the old process's sessions become ``node-lost`` once, the new
    process's sessions (new ids) stay."""
    backend = Backend(cluster.redis_port)
    old = connect(cluster.gw_ws(0), "rex")
    backend.wait_for("connected", lambda: backend.matching(type="connected", user="rex"))
    old_session = old.connected_frame["session"]
    cluster.kill_gateway(0)
    old.close()
    cluster.start_gateway(0)
    cluster.wait_ready(0)
    new = connect(cluster.gw_ws(0), "rex")
    new_session = new.connected_frame["session"]
    assert new_session != old_session and Cluster.instance_of(new) == "gw0"
    backend.wait_for("old session reaped", lambda: backend.matching(type="disconnected", session=old_session),
                     timeout=LEASE_TTL_MS / 1000 + 8)
    lost = backend.matching(type="disconnected", session=old_session)
    assert [(e["reason"], e["instance"]) for e in lost] == [("node-lost", "gw0")]
    backend.wait_for("new session registered", lambda: backend.matching(type="connected", session=new_session))
    assert backend.online == {"rex"}
    presence = requests.get(f"{cluster.gw_url(1)}/api/users/rex/presence", timeout=5).json()
    assert presence == {"user": "rex", "online": True, "instances": {"gw0": [new_session]}}
    new.close()
    backend.wait_for("offline", lambda: not backend.online)
    backend.assert_each_once()


def assert_nobody_reaped_then_leave(backend: Backend, clients: list[StompClient], users: set[str]):
    """No `disconnected` event so far and `users` online; then the clients leave, everyone is
    offline, and every event was written once."""
    assert not backend.matching(type="disconnected"), backend.matching(type="disconnected")
    assert backend.online == users
    for c in clients:
        c.close()
    backend.wait_for("offline", lambda: not backend.online)
    backend.assert_each_once()


def test_a_redis_outage_longer_than_the_lease_reaps_nobody():
    """Redis down (killed, restarted with its append-only file) for twice the lease: every lease
    expires meanwhile, and the instances reconnect one after the other (backoff with jitter),
    but the first one back does not reap the others (after a reconnect an instance renews for the
    ttl plus the longest reconnect backoff before it reaps), so nobody is shown offline and nothing is written twice."""
    cluster = Cluster("outage-lifecycle", replicas=0, config_yaml=CONFIG, redis_args=["--appendonly", "yes", "--appendfsync", "always"])
    try:
        backend = Backend(cluster.redis_port)
        clients = [connect(cluster.gw_ws(i), f"p{i}") for i in range(3)]
        backend.wait_for("online", lambda: backend.online == {"p0", "p1", "p2"})
        cluster.kill_redis()
        down_until = time.monotonic() + 2 * LEASE_TTL_MS / 1000
        wait_until(lambda: time.monotonic() > down_until, 10, what="the outage")
        cluster.start_redis()
        for i in range(3):
            cluster.wait_ready(i)
        backend = Backend(cluster.redis_port, known=backend)
        # Long enough for a reaper to act: the ttl and the reconnect backoff (10 s) of renewals
        # after its reconnect, plus a renewal period or two.
        quiet_until = time.monotonic() + LEASE_TTL_MS / 1000 + 10 + 2
        backend.wait_for("a quiet spell", lambda: time.monotonic() > quiet_until)
        assert_nobody_reaped_then_leave(backend, clients, {"p0", "p1", "p2"})
    finally:
        stop_cluster(cluster)


CLOCKSTEP_C = REPO / "tests" / "support" / "clockstep" / "clockstep.c"


def test_a_step_forward_of_redis_clock_reaps_nobody(tmp_path):
    """Redis's wall clock steps 10 s forward (a VM resumed, NTP stepping, the time set by hand):
    every live instance's lease expires at once, with no reconnect or failed renewal to hold the
    reaping back. The first instance to renew reaped all the others, and their sessions were
    closed. Each instance now compares Redis's clock with its own at every renewal, and after
    such a step waits, as after a reconnect, until the others renewed: nobody is reaped.
    (redis-server runs with a preloaded shim that steps its wall clock: tests/support/clockstep.)"""
    shim = tmp_path / "clockstep.so"
    compiler = shutil.which("cc") or shutil.which("clang")  # the Swift toolchain has clang
    assert compiler, "no C compiler (cc or clang) to build the clock-step shim"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(CLOCKSTEP_C)], check=True)
    step = tmp_path / "step-ms"
    step.write_text("0\n")
    env = {"LD_PRELOAD": str(shim), "CLOCK_STEP_FILE": str(step)}
    cluster = Cluster("clockstep-lifecycle", replicas=0, config_yaml=CONFIG, redis_env=env)
    try:
        backend = Backend(cluster.redis_port)
        clients = [connect(cluster.gw_ws(i), f"k{i}") for i in range(3)]
        backend.wait_for("online", lambda: backend.online == {"k0", "k1", "k2"})
        before = int(cluster.redis_cli("TIME").split()[0])
        step.write_text("10000\n")
        wait_until(lambda: int(cluster.redis_cli("TIME").split()[0]) >= before + 10, 10, what="Redis's clock stepped")
        # Long enough for a reaper to act: the ttl and a few renewals.
        quiet_until = time.monotonic() + LEASE_TTL_MS / 1000 + 3
        backend.wait_for("a quiet spell", lambda: time.monotonic() > quiet_until)
        for c in clients:
            c.expect_nothing(0.1)  # no ERROR: the sessions were not closed
        logs = "".join((ARTIFACTS / f"clockstep-lifecycle-gw{i}.log").read_text() for i in range(3))
        assert "Redis's clock stepped forward" in logs
        assert_nobody_reaped_then_leave(backend, clients, {"k0", "k1", "k2"})
    finally:
        stop_cluster(cluster)


def test_after_redis_lost_its_data_sessions_reconnect_and_presence_is_rebuilt(cluster):
    """FLUSHALL (a Redis restarted without persistence): the instances find their lease or
    registry lost and close their sessions; the clients reconnect and are online again. A
    user whose client does not come back got no `user-offline` (its session's registry went
    with the data): the `presence-reset` before the first event after the loss takes them
    offline in the backend's state."""
    backend = Backend(cluster.redis_port)
    ivy = connect(cluster.gw_ws(0), "ivy")
    joe = connect(cluster.gw_ws(1), "joe")
    backend.wait_for("online", lambda: backend.online == {"ivy", "joe"} and backend.resets == 1)
    cluster.redis_cli("FLUSHALL")
    ivy.expect_error("this instance lost its presence lease in Redis, reconnect", timeout=10)
    joe.expect_error("this instance lost its presence lease in Redis, reconnect", timeout=10)
    joe.close()  # its tab was closed meanwhile: it does not come back
    # The stream and its group went with the data; the backend keeps what it knew.
    backend = Backend(cluster.redis_port, known=backend)
    again = connect(cluster.gw_ws(0), "ivy")
    backend.wait_for("a reset, then ivy online again", lambda: backend.resets == 2 and backend.online == {"ivy"})
    presence = requests.get(f"{cluster.gw_url(2)}/api/users/ivy/presence", timeout=5).json()
    assert presence["instances"] == {"gw0": [again.connected_frame["session"]]}
    again.close()
    backend.wait_for("offline", lambda: not backend.online)
    backend.assert_each_once()


def test_greeting_service_logs_presence_changes(cluster):
    """The example backend, with ``--presence-group``, reads the events typed
    (``LifecycleEventConsumer``) and logs who comes online and goes offline."""
    cluster.start_replica(0, "--presence-group", "presence-log")
    kim = connect(cluster.gw_ws(1), "kim")
    wait_until(lambda: "presence: kim online (gw1)" in cluster.replica_log(0), 15, what="online in the log")
    kim.close()
    wait_until(lambda: "presence: kim offline (client)" in cluster.replica_log(0), 15, what="offline in the log")
