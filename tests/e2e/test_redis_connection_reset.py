"""Redis dies (kill -9) while a command is in flight and unread: the kernel resets the gateway's
connection (ECONNRESET, not a clean close). Redis may or may not have run the command, so the
answer must say the outcome is unknown: a 504 for an API publish (never 503 "not published"), an
ERROR saying so for a receipted SEND to a redis-stream or redis-pubsub route (never a RECEIPT,
never a plain "failed")."""
import os
import signal
import subprocess
import threading

import pytest
import requests

from support.gateway import Gateway
from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args
from support.sockets import tcp_queue_bytes

BODY = "x" * 20_000  # large enough to find in Redis's receive queue


@pytest.fixture
def redis_then_reset(tmp_path):
    """A redis-server and a gateway on it (with an /app/orders stream route); yields
    `(gateway, cut)`: `cut(start)` stops Redis, calls `start()` (which sends a command), waits
    until that command sits unread in Redis's receive queue, then kills Redis (a reset)."""
    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = []
    gw = None

    def cut(start):
        os.kill(redis.pid, signal.SIGSTOP)
        stopped.append(True)
        start()
        wait_until(lambda: tcp_queue_bytes(port, "rx") >= len(BODY), 10, what="the command waiting unread in Redis's receive queue")
        redis.kill()  # SIGKILL: closing a socket with unread data sends a reset
        redis.wait(5)

    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        # A long command timeout: the answer must come from the reset, not from a timeout.
        gw = Gateway(name="redis-reset", sets=[
            f"redis.url=redis://127.0.0.1:{port}", "redis.command-timeout-ms=30000", "history.disabled-prefixes=/topic/plain",
            "routes.names=orders,chat", "routes.orders.destination=/app/orders", "routes.orders.type=redis-stream",
            "routes.orders.stream=orders", "routes.chat.destination=/app/chat", "routes.chat.type=redis-pubsub",
            "routes.chat.channel=chat", "routes.chat.require-subscriber=true"])
        gw.redis_port = port
        yield gw, cut
    finally:
        if stopped and redis.poll() is None:
            os.kill(redis.pid, signal.SIGCONT)
        terminate(redis)
        if gw:
            gw.stop()


def publish_cut(gw, cut, topic: str) -> str:
    """Publishes BODY to `topic` through the API while `cut` resets Redis's connection; asserts
    the 504 "outcome unknown" and returns its error text."""
    answer = {}
    publisher = threading.Thread(target=lambda: answer.update(r=requests.post(
        f"{gw.base}/api/notification", json={"topic": topic, "message": BODY}, timeout=20)))
    cut(publisher.start)
    publisher.join(20)
    r = answer["r"]
    assert r.status_code == 504, f"{r.status_code} {r.text}"
    assert "outcome unknown" in r.json()["error"], r.text
    return r.json()["error"]


def send_cut(gw, cut, destination: str):
    """A receipted SEND of BODY to `destination` while `cut` resets Redis's connection (after
    one that got its RECEIPT); returns the ERROR it got instead of a RECEIPT."""
    c = gw.client()
    c.connect()
    c.send_frame("SEND", {"destination": destination, "receipt": "s0"}, "before")
    assert c.receive(5).command == "RECEIPT"
    cut(lambda: c.send_frame("SEND", {"destination": destination, "receipt": "s1"}, BODY))
    frame = c.receive(10)
    assert frame.command == "ERROR" and frame.get("receipt-id") == "s1", f"{frame.command} {frame.get('message')}"
    return frame


def test_a_publish_cut_by_a_connection_reset_is_outcome_unknown(redis_then_reset):
    gw, cut = redis_then_reset
    assert gw.publish("/topic/reset", "before").status_code == 200
    publish_cut(gw, cut, "/topic/reset")


def test_a_publish_without_history_cut_by_a_connection_reset_is_outcome_unknown(redis_then_reset):
    """Without history the publish reaches this instance's subscribers at once; whether Redis
    passed it on to the other instances is what is unknown."""
    gw, cut = redis_then_reset
    subscriber = gw.client()
    subscriber.connect()
    subscriber.subscribe("/topic/plain", id="p", receipt="p")
    assert "this instance's subscribers" in publish_cut(gw, cut, "/topic/plain")
    assert subscriber.expect_message().text == BODY


@pytest.mark.parametrize("destination", ["/app/orders", "/app/chat"], ids=["redis-stream", "redis-pubsub"])
def test_a_route_send_cut_by_a_connection_reset_is_outcome_unknown(redis_then_reset, destination):
    gw, _ = redis_then_reset
    backend = None
    if destination == "/app/chat":
        # A backend on the channel: a PUBLISH that reaches no one is an ERROR of its own.
        backend = subprocess.Popen(["redis-cli", "-p", str(gw.redis_port), "SUBSCRIBE", "chat"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis_cli(gw.redis_port, "PUBSUB", "NUMSUB", "chat").split() == ["chat", "1"], 10, what="a subscriber on chat")
    try:
        frame = send_cut(*redis_then_reset, destination)
        assert "outcome unknown" in frame.get("message", ""), frame.get("message")
    finally:
        if backend:
            terminate(backend)


def test_a_pubsub_route_send_that_reaches_no_backend_is_an_error(redis_then_reset):
    """With require-subscriber, a PUBLISH no backend was subscribed to reached nobody: an ERROR,
    not a RECEIPT."""
    gw, _ = redis_then_reset
    c = gw.client()
    c.connect()
    c.send_frame("SEND", {"destination": "/app/chat", "receipt": "r"}, "hello")
    frame = c.receive(5)
    assert frame.command == "ERROR" and frame.get("receipt-id") == "r", f"{frame.command} {frame.get('message')}"
    assert "reached no subscriber: not delivered" in frame.get("message", ""), frame.get("message")


@pytest.mark.parametrize("destination", ["/topic/reset", "/topic/plain"], ids=["history", "no-history"])
def test_a_topic_send_cut_by_a_connection_reset_says_outcome_unknown(redis_then_reset, destination):
    """A receipted SEND to a topic gets the same first words as the API's 504 (before, "publish
    to … failed: …", which a client could take for "not published")."""
    frame = send_cut(*redis_then_reset, destination)
    assert frame.get("message", "").startswith(f"publish outcome unknown: {destination}: "), frame.get("message")
