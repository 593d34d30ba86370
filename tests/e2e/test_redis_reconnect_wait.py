"""While the gateway's Redis command connections reconnect (here: killed with `CLIENT KILL TYPE
normal`, their reconnect held up by a proxy), publishes wait for them, up to
`redis.reconnect-wait-ms`, and go out in the order they were sent once they are back: receipts
and 200s, and subscribers get every message once, in order. With `redis.reconnect-wait-ms=0` the
same publishes are refused at once (the explicit 503 / ERROR, "not published")."""
import subprocess
import threading

import pytest
import requests

from support.gateway import Gateway
from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args
from support.replyloss import ReplyLossProxy

TOPIC = "/topic/reconnect.wait"


@pytest.fixture
def held_gateway(tmp_path, request):
    """`start(*sets)` -> (gateway, proxy, redis_port): a gateway whose Redis is behind a proxy."""
    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = []

    def start(*sets):
        proxy = ReplyLossProxy(port)
        gw = Gateway(name=f"reconnect-wait-{request.node.name}", sets=[f"redis.url=redis://127.0.0.1:{proxy.port}", *sets])
        started.append((gw, proxy))
        return gw, proxy, port

    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        yield start
    finally:
        for gw, proxy in started:
            proxy.release()
            gw.stop()
            proxy.close()
        terminate(redis)


def cut_command_connections(gw, proxy, redis_port):
    """Kills the gateway's command connections and holds their reconnect in the proxy."""
    proxy.hold()
    killed = int(redis_cli(redis_port, "CLIENT", "KILL", "TYPE", "normal"))
    assert killed >= 1
    wait_until(lambda: gw.metric("switchboard_redis_connected", role="commands") == 0, 10, what="the command connection down")


def test_publishes_during_a_reconnect_wait_for_it_and_keep_their_order(held_gateway):
    gw, proxy, redis_port = held_gateway("redis.reconnect-wait-ms=30000")
    sub = gw.client()
    sub.connect()
    sub.subscribe(TOPIC, id="s", receipt="s")
    sender = gw.client()
    sender.connect()
    cut_command_connections(gw, proxy, redis_port)
    texts = [f"m{i}" for i in range(10)]
    for i, text in enumerate(texts[:5]):
        sender.send_frame("SEND", {"destination": TOPIC, "receipt": f"r{i}"}, text)
    api = {}
    publisher = threading.Thread(target=lambda: api.update(r=requests.post(
        f"{gw.base}/api/notification", json={"topic": TOPIC, "message": "api"}, timeout=40)))
    publisher.start()
    for i, text in enumerate(texts[5:], start=5):
        sender.send_frame("SEND", {"destination": TOPIC, "receipt": f"r{i}"}, text)
    # Held, not refused: every one of them waits (the metric counts them).
    wait_until(lambda: gw.metric("switchboard_redis_waiting_commands") == len(texts) + 1, 10, what="the publishes waiting")
    sender.expect_nothing(0.1)
    assert "r" not in api
    proxy.release()
    wait_until(lambda: gw.metric("switchboard_redis_waiting_commands") == 0, 20, what="the waiting publishes written")
    receipts = [sender.receive(20) for _ in texts]
    assert [f.command for f in receipts] == ["RECEIPT"] * len(texts), [f.get("message") for f in receipts]
    assert [f.get("receipt-id") for f in receipts] == [f"r{i}" for i in range(len(texts))]
    publisher.join(40)
    assert api["r"].status_code == 200, api["r"].text
    got = [sub.expect_message(10).text for _ in range(len(texts) + 1)]
    assert [t for t in got if t != "api"] == texts
    assert got.count("api") == 1
    sub.expect_nothing(0.3)


def test_with_no_wait_a_publish_during_a_reconnect_is_refused_at_once(held_gateway):
    gw, proxy, redis_port = held_gateway("redis.reconnect-wait-ms=0")
    sub = gw.client()
    sub.connect()
    sub.subscribe(TOPIC, id="s", receipt="s")
    cut_command_connections(gw, proxy, redis_port)
    r = requests.post(f"{gw.base}/api/notification", json={"topic": TOPIC, "message": "refused"}, timeout=10)
    assert r.status_code == 503 and "not published" in r.json()["error"], r.text
    proxy.release()
    wait_until(lambda: gw.metric("switchboard_redis_connected", role="commands") == 1, 10, what="the command connection back")
    assert gw.publish(TOPIC, "after").status_code == 200
    assert sub.expect_message(10).text == "after"
    sub.expect_nothing(0.3)


def test_sigterm_answers_the_publishes_held_for_redis(held_gateway):
    """A SIGTERM while publishes wait for the command connection (longer than the shutdown's
    grace): each gets its explicit answer before the gateway exits (503 / ERROR, not published),
    none is left unanswered."""
    gw, proxy, redis_port = held_gateway("redis.reconnect-wait-ms=60000")
    sender = gw.client()
    sender.connect()
    cut_command_connections(gw, proxy, redis_port)
    sender.send_frame("SEND", {"destination": TOPIC, "receipt": "held"}, "stomp")
    api = {}

    def publish():
        try:
            api["r"] = requests.post(f"{gw.base}/api/notification", json={"topic": TOPIC, "message": "api"}, timeout=60)
        except requests.RequestException as error:
            api["error"] = error

    publisher = threading.Thread(target=publish)
    publisher.start()
    wait_until(lambda: gw.metric("switchboard_redis_waiting_commands") == 2, 10, what="the publishes waiting")
    gw.proc.send_signal(15)
    publisher.join(60)
    assert "error" not in api, api.get("error")
    assert api["r"].status_code == 503 and "not published" in api["r"].json()["error"], api["r"].text
    frame = sender.receive(20)
    assert frame.command == "ERROR" and "not published" in frame.get("message"), frame
    assert gw.proc.wait(60) == 0
