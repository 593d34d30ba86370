"""The delivery canary: readiness means the cross-instance path delivers. A Redis that stops
answering (SIGSTOP: the TCP connections stay up; the subscriber connection, which sends
nothing, looks connected all along) turns /health/ready 503 with the canary's reason within
the canary timeout, and ready again once Redis runs."""
import os
import signal

import requests

from support.process import wait_until


def ready(url):
    r = requests.get(f"{url}/health/ready", timeout=2)
    return r.status_code, r.json()


def repairs(url):
    lines = [l for l in requests.get(f"{url}/metrics", timeout=2).text.splitlines() if l.startswith("switchboard_history_repairs_total")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_stalled_redis_makes_instances_not_ready_until_it_delivers_again(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=2)
    gw = cluster.gw_url(0)
    sub = clients(cluster.client(cluster.gw_ws(0)))
    sub.subscribe("/topic/watched", id="1", receipt="r")
    wait_until(lambda: ready(gw)[0] == 200, 20, what="ready")
    health = requests.get(f"{gw}/health", timeout=2).json()
    assert health["redis"]["canaryAgeSeconds"] < 3, health
    # The other instance's canaries arrive here too.
    peers = wait_until(lambda: requests.get(f"{gw}/health", timeout=2).json()["redis"]["peerCanaryAgeSeconds"].get("gw1"), 10,
                       what="gw1's canary seen by gw0")
    assert peers < 3
    metrics = requests.get(f"{gw}/metrics", timeout=2).text
    assert "switchboard_delivery_canary_age_seconds " in metrics
    redis = cluster.procs["redis"]
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        # The canary's reason appears within its timeout whatever else is reported meanwhile
        # (a command timing out on the stalled server also resets the command connection).
        def canary_late():
            status, body = ready(gw)
            return status == 503 and any("delivery canary late" in reason for reason in body.get("reasons", [])) and body
        wait_until(canary_late, 15, what="not ready with the canary's reason while Redis is stalled")
        before = repairs(gw)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_until(lambda: ready(gw)[0] == 200 and ready(cluster.gw_url(1))[0] == 200, 20, what="ready again")
    # The path is back: every local destination read what it may have missed from history.
    wait_until(lambda: repairs(gw) > before, 10, what="a history read after the canary came back")
    requests.post(f"{cluster.gw_url(1)}/api/notification", json={"topic": "/topic/watched", "message": "after"}).raise_for_status()
    assert sub.expect_message(10).text == "after"


def test_haproxy_sends_api_requests_on_when_every_instance_is_not_ready(cluster_factory):
    """examples/haproxy.cfg's panic mode: with every instance failing its readiness check at once,
    an API request through haproxy still reaches an instance, which answers for itself (here an
    explicit JSON error, Redis being stalled), instead of haproxy's own 503 page; and the request
    after Redis runs again is published."""
    cluster = cluster_factory(replicas=0, gateways=2)
    primaries = ("gw1", "gw2")
    wait_until(lambda: all(cluster.server_states("api")[s] == "UP" for s in primaries), 20, what="haproxy sees both up")
    redis = cluster.procs["redis"]
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all(cluster.server_states("api")[s] == "DOWN" for s in primaries), 20,
                   what="haproxy marks every instance down while Redis is stalled")
        r = requests.post(f"{cluster.lb_url}/api/notification", json={"topic": "/topic/panic", "message": "stalled"}, timeout=15)
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:300])
        assert r.status_code >= 500 and r.json().get("error"), (r.status_code, r.text[:300])
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_until(lambda: all(cluster.server_states("api")[s] == "UP" for s in primaries), 20, what="haproxy sees both up again")
    r = requests.post(f"{cluster.lb_url}/api/notification", json={"topic": "/topic/panic", "message": "running"}, timeout=15)
    assert r.status_code == 200, r.text


def test_a_stalled_shard_of_a_redis_cluster_makes_instances_not_ready(cluster_factory):
    """On a Redis Cluster the canary runs on every shard (one shard channel per primary):
    `CLIENT PAUSE … ALL` on a primary that does not own `{canary}` (its clients stall, the
    cluster bus keeps it a healthy member, so nothing fails over) turns /health/ready 503 with
    the canary's reason naming that shard's node, and ready again after the pause."""
    cluster = cluster_factory(replicas=0, gateways=1, config_yaml="redis:\n  url: redis://127.0.0.1:6379\n", redis_cluster={})
    rc = cluster.rc
    gw = cluster.gw_url(0)
    canary_owner = rc.node_for_key("switchboard:{canary}")
    stalled = next(p for p in rc.primaries() if p is not canary_owner)
    wait_until(lambda: ready(gw)[0] == 200, 30, what="ready")
    # Every shard's canary comes back before the stall (the first may still be on its way).
    wait_until(lambda: requests.get(f"{gw}/health", timeout=2).json()["redis"]["canaryAgeSeconds"] < 2, 10, what="every canary back")
    rc.cli(stalled, "CLIENT", "PAUSE", "7000", "ALL", check=True)

    def shard_late():
        status, body = ready(gw)
        return status == 503 and any("delivery canary late" in r and f":{stalled.port}" in r for r in body.get("reasons", [])) and body
    late = wait_until(shard_late, 15, what=f"not ready, the canary of redis{stalled.index}'s shard late")
    assert not any(f":{canary_owner.port}" in r for r in late["reasons"]), late
    wait_until(lambda: ready(gw)[0] == 200, 30, what="ready again after the pause")


def test_peer_canaries_seen_are_bounded(cluster_factory):
    """The canary channel is open to any Redis client: senders that are not instance ids (over
    256 bytes) are ignored and at most 1,024 peers are kept (each is in every /health answer),
    silent ones forgotten after ten canary intervals."""
    import subprocess
    import time
    cluster = cluster_factory(replicas=0, gateways=1)
    gw = cluster.gw_url(0)
    wait_until(lambda: ready(gw)[0] == 200, 20, what="ready")
    commands = "".join(f"PUBLISH switchboard:canary fake-{i}\n" for i in range(1200))
    commands += f"PUBLISH switchboard:canary {'x' * 300}\n"
    subprocess.run(["redis-cli", "-p", str(cluster.redis_port)], input=commands.encode(), check=True,
                   capture_output=True, timeout=60)
    sent = time.monotonic()

    def health():
        return requests.get(f"{gw}/health", timeout=5).json()["redis"]

    # The instance's own canary, published after those and seen through the same subscriber
    # connection, comes after them: they were all handled once it is seen.
    wait_until(lambda: health()["canaryAgeSeconds"] < time.monotonic() - sent - 1.0, 20,
               what="the instance's own canary after the published senders")
    peers = health()["peerCanaryAgeSeconds"]
    assert 1000 <= len(peers) <= 1024, len(peers)
    assert not any(len(p) > 256 for p in peers)
