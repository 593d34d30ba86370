"""Redis Sentinel: a gateway finds the primary through two sentinels and follows a failover
(the primary is killed, the sentinels promote the replica): readiness is 503 while no primary
is known and 200 again after, the HTTP publish API works again and a STOMP subscriber receives
what is published after the failover."""
import requests

from support.process import wait_until
from support.redis import redis_cli


def publish(cluster, message):
    return requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/failover", "message": message}, timeout=3)


def received_after_publishing(cluster, subscriber, message):
    """Publishes `message` (again) and waits briefly for it: true once it arrives."""
    if publish(cluster, message).status_code != 200:
        return False
    while True:
        frame = subscriber.expect_message(0.5)
        if frame.text == message:
            return True


def test_gateway_follows_sentinel_failover(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=1, sentinels=2)
    subscriber = clients(cluster.client(cluster.gw_ws(0)))
    subscriber.subscribe("/topic/failover", id="f", receipt="r")
    publish(cluster, "before").raise_for_status()
    assert subscriber.expect_message().text == "before"
    assert "switchboard-gw0" in redis_cli(cluster.redis_port, "CLIENT", "LIST")

    cluster.kill_redis()
    wait_until(lambda: requests.get(f"{cluster.gw_url(0)}/health/ready", timeout=1).status_code == 503, what="not ready")
    wait_until(lambda: redis_cli(cluster.redis_replica_port, "ROLE").startswith("master"), 20, what="replica promoted")
    cluster.wait_ready(0)
    # The gateway's connections (client name switchboard-gw0) are on the new primary.
    wait_until(lambda: "switchboard-gw0" in redis_cli(cluster.redis_replica_port, "CLIENT", "LIST"), what="gateway on the new primary")
    wait_until(lambda: received_after_publishing(cluster, subscriber, "after-failover"), 20, what="delivery after failover")
