"""Failures with real processes: backend replicas processing exactly once and surviving a
kill -9, Redis restarts, gateway crashes behind haproxy."""
import re
import subprocess
import time

import pytest
import requests

from support.cluster import Cluster
from support.process import wait_until
from support.stompclient import ConnectionClosed, StompClient


def greetings(client, count, timeout=30.0):
    """Collects `count` greetings; returns {x-msg-id: [frames]}."""
    seen = {}
    deadline = time.monotonic() + timeout
    got = 0
    while got < count:
        f = client.expect_message(max(deadline - time.monotonic(), 0.01))
        seen.setdefault(f["x-msg-id"], []).append(f)
        got += 1
    return seen


def processed_ids(cluster, replicas):
    ids = []
    for j in replicas:
        ids += re.findall(r"processed (\S+) by", cluster.replica_log(j))
    return ids


def test_each_send_processed_by_exactly_one_replica(cluster_factory, clients):
    cluster = cluster_factory()
    watchers = [clients(cluster.client(cluster.gw_ws(i))) for i in range(3)]
    for n, w in enumerate(watchers):
        w.subscribe("/topic/greetings", id="g", receipt=f"r{n}")
    senders = [clients(cluster.client()) for _ in range(3)]
    n = 60
    for i in range(n):
        senders[i % 3].send("/app/greet", f"user{i}", headers={"x-msg-id": str(i)}, receipt=f"s{i}")
    for w in watchers:
        seen = greetings(w, n)
        assert sorted(seen, key=int) == [str(i) for i in range(n)]
        assert all(len(v) == 1 for v in seen.values()), "a greeting arrived twice"
        assert all(v[0].text == f"Hello, user{k}!" for k, v in seen.items())
    ids = processed_ids(cluster, [0, 1])
    assert len(ids) == n and len(set(ids)) == n, "an entry was processed twice or not at all"


def test_killed_replica_work_is_claimed_by_the_other(cluster_factory, clients):
    cluster = cluster_factory(replica_args=["--processing-delay-ms", "200", "--claim-min-idle-ms", "1000"])
    watcher = clients(cluster.client(cluster.gw_ws(0)))
    watcher.subscribe("/topic/greetings", id="g", receipt="r")
    sender = clients(cluster.client())
    n = 30
    for i in range(n):
        sender.send("/app/greet", f"u{i}", headers={"x-msg-id": str(i)}, receipt=f"s{i}")
    # Kill replica 0 while it holds pending entries.
    def replica0_pending():
        lines = cluster.redis_cli("XPENDING", "GREETING_CHANNEL_OUTBOUND", "greeting-service").splitlines()
        return "greeting-0" in lines and int(lines[lines.index("greeting-0") + 1]) > 0

    wait_until(replica0_pending, timeout=20, what="replica 0 holding pending entries")
    cluster.kill_replica(0)
    seen = greetings(watcher, n, timeout=60)
    assert sorted(seen, key=int) == [str(i) for i in range(n)], "a message was lost"
    summary = cluster.redis_cli("XPENDING", "GREETING_CHANNEL_OUTBOUND", "greeting-service").splitlines()
    assert summary[0] == "0", f"entries still pending: {summary}"


def test_redis_restart_during_traffic(cluster_factory, clients):
    cluster = cluster_factory(replicas=0)
    local_sub = clients(cluster.client(cluster.gw_ws(0)))
    remote_sub = clients(cluster.client(cluster.gw_ws(1)))
    for c in (local_sub, remote_sub):
        c.subscribe("/topic/live", id="1", receipt="r")
    requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/live", "message": "before"}).raise_for_status()
    before = local_sub.expect_message()
    assert before.text == "before" and remote_sub.expect_message().text == "before"

    cluster.kill_redis()
    wait_until(lambda: requests.get(f"{cluster.gw_url(0)}/health/ready", timeout=1).status_code == 503, what="not ready without redis")
    # /topic/live keeps history, which lives in Redis: the publisher is told it was not
    # published, and nobody gets it (not even this instance's subscribers: no silent split).
    r = requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/live", "message": "during"})
    assert r.status_code == 503 and "redis" in r.json()["error"] and "not published" in r.json()["error"]
    local_sub.expect_nothing(0.3)
    # A SEND to a stream route gets an ERROR, never a receipt.
    sender = clients(cluster.client(cluster.gw_ws(2)))
    sender.send_frame("SEND", {"destination": "/app/greet", "receipt": "lost?"}, "during outage")
    err = sender.expect_error()
    assert err["receipt-id"] == "lost?" and "XADD to redis stream GREETING_CHANNEL_OUTBOUND failed" in err["message"]

    cluster.start_redis()
    for i in range(3):
        cluster.wait_ready(i, timeout=20)
    # sender2 below connects through haproxy, which marks the instances up again only after
    # two passed checks (a session's upgrade has no panic mode): wait for that too.
    cluster.wait_all_up()
    requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/live", "message": "after"}).raise_for_status()
    after = local_sub.expect_message(10)
    assert after.text == "after"
    assert remote_sub.expect_message(10).text == "after"  # re-subscribed by itself
    remote_sub.expect_nothing(0.3)  # "during" never reached the other instance, and nothing twice
    # Redis came back empty: the history is a new one, which positions say (a new epoch).
    assert after["x-position"].split(":")[0] != before["x-position"].split(":")[0]
    assert after["x-position"].endswith(":1")
    sender2 = clients(cluster.client())
    sender2.send("/app/greet", "after outage", receipt="ok")
    assert "after outage" in cluster.redis_cli("XREVRANGE", "GREETING_CHANNEL_OUTBOUND", "+", "-", "COUNT", "1")


def test_sessions_get_in_through_haproxy_while_no_instance_is_ready(cluster_factory, clients):
    """Redis down: every instance is unready and haproxy marks them all down. A phone that
    reconnects then still gets in (the sessions backend's backups, like the api backend's
    panic mode), not haproxy's own 503 page; its SUBSCRIBE to a destination with history waits
    for Redis at the gateway, and gets its RECEIPT, then the messages, once Redis is back."""
    cluster = cluster_factory(replicas=0, gateway_args=("--set", "redis.unreachable-wait-ms=60000"))
    cluster.wait_all_up()
    cluster.kill_redis()
    names = [f"gw{i + 1}" for i in range(3)]
    wait_until(lambda: all(cluster.server_states("sessions").get(n) == "DOWN" for n in names), 20, what="haproxy marks every instance down")
    phone = clients(cluster.client())  # CONNECTED through haproxy
    phone.send_frame("SUBSCRIBE", {"destination": "/topic/back", "id": "1", "receipt": "r"})
    phone.expect_nothing(0.3)  # waits for Redis
    cluster.start_redis()
    phone.expect_receipt("r", timeout=30)
    i = int(Cluster.instance_of(phone)[2:]) - 1
    cluster.wait_ready(i, timeout=20)
    requests.post(f"{cluster.gw_url(i)}/api/notification", json={"topic": "/topic/back", "message": "back"}).raise_for_status()
    assert phone.expect_message(10).text == "back"


def test_gateway_crash_clients_reconnect_through_haproxy(cluster_factory):
    cluster = cluster_factory(replicas=0)
    cluster.wait_all_up()  # round-robin reaches gw1 only once haproxy sees it up
    subs = []
    for _ in range(6):
        c = cluster.client()
        c.subscribe("/topic/survive", id="1", receipt="r")
        subs.append(c)
    victims = [c for c in subs if Cluster.instance_of(c) == "gw1"]
    assert victims
    cluster.kill_gateway(1)
    for c in victims:
        assert c.wait_closed(5)
    reconnected = []
    for c in victims:
        nc = wait_until(cluster.client, 15, 0.2, what="a reconnection through haproxy")
        assert Cluster.instance_of(nc) != "gw1"
        nc.subscribe("/topic/survive", id="1", receipt="r")
        reconnected.append(nc)
    survivors = [c for c in subs if c not in victims] + reconnected
    requests.post(f"{cluster.lb_url}/api/notification", json={"topic": "/topic/survive", "message": "still here"}).raise_for_status()
    for c in survivors:
        assert c.expect_message(10).text == "still here"
    for c in subs + reconnected:
        c.close()


def test_seed_send_to_app_greet_with_pubsub_route(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, config="seed-pubsub.yaml", gateways=1)
    listener = subprocess.Popen(["redis-cli", "-p", str(cluster.redis_port), "SUBSCRIBE", "GREETING_CHANNEL_OUTBOUND"],
                                stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: cluster.redis_cli("PUBSUB", "NUMSUB", "GREETING_CHANNEL_OUTBOUND").splitlines()[1] == "1", what="redis-cli subscribed")
        c = clients(cluster.client())
        c.send("/app/greet", "Hello via pub/sub", receipt="p")
        lines = []
        deadline = time.monotonic() + 5
        while "Hello via pub/sub" not in lines and time.monotonic() < deadline:
            lines.append(listener.stdout.readline().strip())
        assert "Hello via pub/sub" in lines
    finally:
        listener.kill()
