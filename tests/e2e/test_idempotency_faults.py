"""The fault idempotency keys exist for: Redis ran the publish, and the gateway's connection was
lost before the reply (tests/support/replyloss.py drops that reply and closes the connection).
The caller gets the explicit "outcome unknown" (a 504, or an ERROR for a SEND) and retries with
the same key: every subscriber gets each message exactly once and in order. Without a key the
same retry delivers the message twice, which is what makes the cut the right one (Redis had
run the command). Then the same with real `CLIENT KILL`s of the gateway's command connections
at arbitrary moments while keyed publishes stream."""
import subprocess
import time

import pytest
import requests

from support.gateway import Gateway
from support.process import free_port, terminate, wait_until
from support.redis import ClientKillStorm, redis_cli, redis_server_args
from support.replyloss import ReplyLossProxy

TOPIC = "/topic/idem.faults"


@pytest.fixture
def cut_gateway(tmp_path, request):
    """A redis-server, a ReplyLossProxy in front of it and a gateway on the proxy; yields
    `(gateway, proxy, redis_port)`."""
    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = gw = None
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        proxy = ReplyLossProxy(port)
        # A long command timeout: the 504s must come from the lost replies, not from a timeout.
        gw = Gateway(name=f"idempotency-faults-{request.node.name}", sets=[f"redis.url=redis://127.0.0.1:{proxy.port}", "redis.command-timeout-ms=30000"])
        yield gw, proxy, port
    finally:
        if gw:
            gw.stop()
        if proxy:
            proxy.close()
        terminate(redis)


def subscriber(gw):
    c = gw.client()
    c.connect()
    c.subscribe(TOPIC, id="s", receipt="s")
    return c


def publish_until_answered(gw, text: str, key: str | None, deadline: float = 20.0) -> list:
    """Publishes `text` (with `key`, if any) until a 200, retrying a 503 or 504 at once: a
    client that retries what it was told may not have been published. Returns the answers."""
    answers = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        headers = {"Idempotency-Key": key} if key else {}
        r = requests.post(f"{gw.base}/api/notification", json={"topic": TOPIC, "message": text}, headers=headers, timeout=35)
        answers.append(r)
        if r.status_code == 200:
            return answers
        assert r.status_code in (503, 504), f"{r.status_code} {r.text}"
        time.sleep(0.02)
    raise AssertionError(f"{text}: no 200 in {deadline} s: {[(a.status_code, a.text) for a in answers]}")


def assert_exactly_once_in_order(sub, texts: list[str]):
    got = [sub.expect_message(10).text for _ in texts]
    assert got == texts, f"lost {sorted(set(texts) - set(got))}, order or duplicates: {got}"
    sub.expect_nothing(0.3)


def test_a_keyed_publish_whose_reply_was_lost_is_delivered_once_when_retried(cut_gateway):
    gw, proxy, _ = cut_gateway
    sub = subscriber(gw)
    texts = [f"api-{i:03d}" for i in range(30)]
    cuts = {texts[5], texts[17], texts[29]}
    for text in texts:
        if text in cuts:
            proxy.lose_reply_to(text)
        answers = publish_until_answered(gw, text, key=f"key-{text}")
        if text in cuts:
            first = answers[0]
            assert first.status_code == 504 and "outcome unknown" in first.json()["error"], first.text
            # Redis had run it: the retry that reached Redis is the duplicate.
            assert answers[-1].json() == {"duplicate": True, "topic": TOPIC}, answers[-1].text
        else:
            assert len(answers) == 1 and "id" in answers[0].json(), (text, [a.text for a in answers])
    assert proxy.lost == [t.encode() for t in texts if t in cuts]
    assert_exactly_once_in_order(sub, texts)


def test_without_a_key_the_same_retry_delivers_twice(cut_gateway):
    """What the key prevents, and proof that the cut falls after Redis ran the command."""
    gw, proxy, _ = cut_gateway
    sub = subscriber(gw)
    proxy.lose_reply_to("unkeyed")
    answers = publish_until_answered(gw, "unkeyed", key=None)
    assert answers[0].status_code == 504 and "outcome unknown" in answers[0].json()["error"], answers[0].text
    assert [sub.expect_message(10).text for _ in range(2)] == ["unkeyed", "unkeyed"]
    sub.expect_nothing(0.3)


def test_a_keyed_send_whose_reply_was_lost_is_received_once_when_resent(cut_gateway):
    """A phone's SEND: the ERROR says the outcome is unknown and closes the connection; the
    client reconnects and sends the same frame again."""
    gw, proxy, _ = cut_gateway
    sub = subscriber(gw)
    texts = [f"stomp-{i:03d}" for i in range(20)]
    cuts = {texts[3], texts[11]}
    sender = gw.client()
    sender.connect()
    errors = 0
    for i, text in enumerate(texts):
        if text in cuts:
            proxy.lose_reply_to(text)
        for attempt in range(50):
            sender.send_frame("SEND", {"destination": TOPIC, "idempotency-key": f"phone-{text}", "receipt": f"r{i}-{attempt}"}, text)
            frame = sender.receive(35)
            if frame.command == "RECEIPT":
                assert frame.get("receipt-id") == f"r{i}-{attempt}"
                break
            assert frame.command == "ERROR", frame.command
            message = frame.get("message", "")
            assert message.startswith(f"publish outcome unknown: {TOPIC}: ") or "redis unavailable" in message, message
            errors += message.startswith("publish outcome unknown")
            sender.close()
            sender = gw.client()
            sender.connect()
        else:
            raise AssertionError(f"{text}: never receipted")
    assert errors == len(cuts)
    assert_exactly_once_in_order(sub, texts)


def test_client_kills_while_keyed_publishes_stream_lose_and_duplicate_nothing(cut_gateway):
    """`CLIENT KILL TYPE normal` every few tens of ms (the gateway's command connections, not its
    Pub/Sub one) while one publisher sends 300 keyed messages and retries every 503/504."""
    gw, _, redis_port = cut_gateway
    subs = [subscriber(gw) for _ in range(3)]
    texts = [f"kill-{i:03d}" for i in range(300)]
    storm = ClientKillStorm(redis_port, 0.03)
    retried = 0
    try:
        for text in texts:
            answers = publish_until_answered(gw, text, key=f"key-{text}")
            retried += len(answers) - 1
    finally:
        storm.stop()
    assert storm.killed > 0, "no connection was killed"
    for sub in subs:
        assert_exactly_once_in_order(sub, texts)
    print(f"{storm.killed} connections killed, {retried} retries")
