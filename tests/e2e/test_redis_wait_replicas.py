"""`redis.wait-replicas` against a primary without a replica: the gateway warns at start, and a
receipted SEND to a stream route gets an ERROR saying no replica acknowledged the entry, never a
RECEIPT; the entry is on the primary. A route with `routes.<name>.wait-replicas=0` gets its
RECEIPT. A plain publish is unaffected. (The fault test across a
kill -9 failover is tests/cluster/test_cluster_sentinel.py.)"""
import subprocess

import pytest

from support.gateway import Gateway
from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args


@pytest.fixture
def lone_redis(tmp_path):
    port = free_port()
    proc = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
    yield port
    terminate(proc)


def test_without_a_replica_a_receipted_send_fails_and_the_gateway_warns(lone_redis):
    gw = Gateway(name="wait-replicas", sets=[
        f"redis.url=redis://127.0.0.1:{lone_redis}", "redis.wait-replicas=1", "redis.wait-replicas-timeout-ms=200",
        "routes.names=orders,clicks", "routes.orders.destination=/app/orders", "routes.orders.type=redis-stream",
        "routes.orders.stream=orders", "routes.clicks.destination=/app/clicks", "routes.clicks.type=redis-stream",
        "routes.clicks.stream=clicks", "routes.clicks.wait-replicas=0"])
    try:
        wait_until(lambda: "redis-stream routes wait for 1 replica (wait-replicas) but the primary has 0 replicas" in gw.log_path.read_text(), 10,
                   what="the start-up warning")
        subscriber = gw.client()
        subscriber.connect()
        subscriber.subscribe("/topic/plain", id="p", receipt="p")
        c = gw.client()
        c.connect()
        c.send_frame("SEND", {"destination": "/app/orders", "receipt": "o1"}, "first")
        frame = c.receive(5)
        assert frame.command == "ERROR", f"a {frame.command} with no replica to acknowledge the entry"
        assert frame.get("receipt-id") == "o1"
        assert "not acknowledged by 1 replica within 200 ms" in frame.get("message", ""), frame.get("message")
        assert redis_cli(lone_redis, "XLEN", "orders") == "1"  # the primary has it, and the ERROR said so
        # A route that overrides the wait (routes.clicks.wait-replicas=0) gets its RECEIPT from the primary alone.
        c = gw.client()
        c.connect()
        c.send_frame("SEND", {"destination": "/app/clicks", "receipt": "c1"}, "click")
        assert c.receive(5).command == "RECEIPT"
        # Publishing does not wait for replicas.
        assert gw.publish("/topic/plain", "hello").status_code == 200
        assert subscriber.expect_message().text == "hello"
    finally:
        gw.stop()
