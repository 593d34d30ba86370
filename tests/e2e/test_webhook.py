"""Application destinations routed to a webhook."""
import base64
import threading
import time

import pytest


@pytest.fixture(scope="module")
def route_gateway(gateway_factory, webhook):
    yaml = f"""
routes:
  names: [greet, chat, catchall]
  greet:
    destination: /app/greet
    type: webhook
    url: {webhook.url}
    timeout-ms: 2000
  chat:
    destination: /app/chat.*
    type: webhook
    url: {webhook.url}
    timeout-ms: 2000
  catchall:
    destination: /app/any/**
    type: webhook
    url: {webhook.url}
    timeout-ms: 2000
"""
    return gateway_factory(yaml=yaml)


def connected(client, gw, **kw):
    c = client(gw)
    c.connect(**kw)
    return c


def test_webhook_request_json(route_gateway, hook, client):
    c = connected(client, route_gateway)
    session = c.connected_frame["session"]
    c.send("/app/greet", "hello hook", headers={"content-type": "text/plain", "x-user-h": "v:1"}, receipt="g")
    req = hook.requests[-1]
    assert req["path"] == "/hook"
    assert req["headers"]["Content-Type"].startswith("application/json")
    j = req["json"]
    assert j["destination"] == "/app/greet"
    assert j["body"] == "hello hook"
    assert j["bodyEncoding"] == "utf8"
    assert j["contentType"] == "text/plain"
    assert j["headers"] == {"x-user-h": "v:1"}
    assert j["session"] == session
    assert "user" in j
    assert j["instance"] == route_gateway.health()["instance"]
    assert abs(j["timestamp"] / 1000 - time.time()) < 60


def test_binary_body_is_base64(route_gateway, hook, client):
    c = connected(client, route_gateway)
    body = bytes(range(256))
    c.send("/app/greet", body, headers={"content-type": "application/octet-stream"}, receipt="b", binary=True)
    j = hook.requests[-1]["json"]
    assert j["bodyEncoding"] == "base64"
    assert base64.b64decode(j["body"]) == body
    assert j["contentType"] == "application/octet-stream"


def test_receipt_only_after_webhook_answers(route_gateway, hook, client):
    hook.delay = 0.8
    c = connected(client, route_gateway)
    t0 = time.monotonic()
    c.send_frame("SEND", {"destination": "/app/greet", "receipt": "slow"}, "wait")
    hook.wait_request(3)
    with pytest.raises(TimeoutError):
        c.receive(0.4)  # the webhook has not answered yet
    c.expect_receipt("slow", timeout=3)
    assert time.monotonic() - t0 >= 0.75


def test_frames_after_routed_send_wait_for_it(route_gateway, hook, client):
    """A later SEND's receipt is not overtaken by an unfinished routed SEND."""
    hook.delay = 0.4
    c = connected(client, route_gateway)
    c.send_frame("SEND", {"destination": "/app/greet", "receipt": "first"}, "1")
    c.send_frame("SEND", {"destination": "/topic/after", "receipt": "second"}, "2")
    assert [f["receipt-id"] for f in c.receive_many(2, timeout=4)] == ["first", "second"]


def test_broadcast_reply_reaches_other_subscribers(route_gateway, hook, client, stomppy):
    hook.reply = {"replies": [{"destination": "/topic/greetings", "body": "Hello, world!",
                               "headers": {"x-from": "hook"}, "contentType": "text/plain", "target": "broadcast"}]}
    other = connected(client, route_gateway)
    other.subscribe("/topic/greetings", id="g", receipt="r")
    conn, lst = stomppy(route_gateway)
    conn.subscribe("/topic/greetings", id="py", receipt="rp")
    lst.wait_receipt("rp")
    sender = connected(client, route_gateway)
    sender.send("/app/greet", "world", receipt="s")
    # Broadcast replies are published before the receipt, so the other session already has it.
    m = other.expect_message(timeout=2)
    assert m.text == "Hello, world!"
    assert m["x-from"] == "hook"
    assert m["content-type"] == "text/plain"
    assert m["destination"] == "/topic/greetings"
    (headers, body), = lst.wait_messages(1)
    assert body == "Hello, world!"
    sender.expect_nothing(0.2)  # not subscribed


def test_sender_reply_reaches_only_the_sender(route_gateway, hook, client):
    hook.reply = lambda req: {"replies": [{"destination": "/topic/private", "body": "just for " + req["json"]["session"],
                                           "target": "sender"}]}
    other = connected(client, route_gateway)
    other.subscribe("/topic/private", id="o", receipt="r")
    sender = connected(client, route_gateway)
    sender.subscribe("/topic/private", id="mine", receipt="r")
    sender.send_frame("SEND", {"destination": "/app/greet", "receipt": "s"}, "hi")
    frames = sender.receive_commands("RECEIPT", "MESSAGE")
    m = frames["MESSAGE"]
    assert m.text == "just for " + sender.connected_frame["session"]
    assert m["subscription"] == "mine"
    other.expect_nothing(0.4)


def test_replies_to_destinations_that_cannot_be_delivered_are_logged_not_published(route_gateway, hook, client):
    # Before, a reply to /topic/* was published with that literal destination (to /topic/**
    # subscribers, in history), and replies to /app/..., a bare prefix or a relative name were
    # dropped without a word; x-recovered passed through. A name not in NFC or over the limit was
    # published (in Redis mode under another name than its subscribers': to nobody).
    refused = ("/topic/*", "/app/ok", "/topic/", "relative", "/topic/cafe\u0301", "/topic/" + "x" * 1100)
    hook.reply = {"replies": [{"destination": d, "body": d} for d in refused]
                  + [{"destination": "/topic/reply.ok", "body": "fine", "headers": {"x-recovered": "true", "x-k": "v"}}]}
    watcher = connected(client, route_gateway)
    watcher.subscribe("/topic/**", id="w", receipt="r")
    sender = connected(client, route_gateway)
    sender.send("/app/greet", "hi", receipt="s")
    m = watcher.expect_message(timeout=2)
    assert (m["destination"], m.text, m["x-k"]) == ("/topic/reply.ok", "fine", "v")
    assert "x-recovered" not in m.headers
    watcher.expect_nothing(0.3)
    log = route_gateway.log_path.read_text(errors="replace")
    for d in refused:
        assert f"reply.destination={d} " in log or f"reply.destination={d}\n" in log, d


def test_sender_reply_without_matching_subscription_is_dropped(route_gateway, hook, client):
    hook.reply = {"replies": [{"destination": "/topic/nobody", "body": "x", "target": "sender"}]}
    c = connected(client, route_gateway)
    c.subscribe("/topic/somebody", id="s", receipt="r")
    c.send("/app/greet", "hi", receipt="s")
    c.expect_nothing(0.3)


def test_routed_send_in_transaction_runs_on_commit(route_gateway, hook, client):
    c = connected(client, route_gateway)
    c.send_frame("BEGIN", {"transaction": "t"})
    c.send_frame("SEND", {"destination": "/app/greet", "transaction": "t", "receipt": "s1"}, "tx1")
    c.send_frame("SEND", {"destination": "/app/chat.x", "transaction": "t", "receipt": "s2"}, "tx2")
    c.expect_nothing(0.3)  # receipts of a transaction's frames wait for COMMIT
    assert not hook.requests
    c.send_frame("COMMIT", {"transaction": "t", "receipt": "c"})
    c.expect_receipt("s1")
    c.expect_receipt("s2")
    c.expect_receipt("c")
    assert [r["json"]["body"] for r in hook.requests] == ["tx1", "tx2"]
    assert all("transaction" not in r["json"]["headers"] for r in hook.requests)


def test_empty_2xx_reply(route_gateway, hook, client):
    hook.status = 204
    c = connected(client, route_gateway)
    c.send("/app/greet", "x", receipt="ok")


def test_wildcard_routes(route_gateway, hook, client):
    c = connected(client, route_gateway)
    c.send("/app/chat.room1", "a", receipt="1")
    assert hook.requests[-1]["json"]["destination"] == "/app/chat.room1"
    c.send("/app/any/deep/path.x", "b", receipt="2")
    assert hook.requests[-1]["json"]["destination"] == "/app/any/deep/path.x"
    c.send("/app/chat.room1.sub", "c")
    err = c.expect_error()
    assert err["message"] == "no route for application destination /app/chat.room1.sub"


def test_non_2xx_is_error(route_gateway, hook, client):
    hook.status = 500
    watcher = connected(client, route_gateway)
    watcher.subscribe("/topic/watch", id="w", receipt="r")
    c = connected(client, route_gateway)
    c.send_frame("SEND", {"destination": "/app/greet", "receipt": "bad"}, "x")
    err = c.expect_error(f"route for /app/greet failed: webhook {hook.url} answered HTTP 500")
    assert err["receipt-id"] == "bad"
    route_gateway.publish("/topic/watch", "still fine")
    assert watcher.expect_message().text == "still fine"


def test_webhook_timeout_is_error(route_gateway, hook, client):
    hook.delay = 6.0  # far past the 2 s timeout: a late timer cannot let the reply win
    c = connected(client, route_gateway)
    t0 = time.monotonic()
    c.send_frame("SEND", {"destination": "/app/greet"}, "x")
    err = c.expect_error(timeout=8)
    assert "timed out after 2000 ms" in err["message"], err["message"]
    assert err["message"].startswith("route for /app/greet failed:")
    assert 1.8 <= time.monotonic() - t0 < 5.0


def test_invalid_reply_json_is_error(route_gateway, hook, client):
    hook.reply = {"replies": [{"body": "no destination"}]}
    c = connected(client, route_gateway)
    c.send("/app/greet", "x")
    err = c.expect_error()
    assert err["message"].startswith("route for /app/greet failed:")
    assert "destination" in err["message"]


def test_no_route(route_gateway, hook, client):
    c = connected(client, route_gateway)
    c.send_frame("SEND", {"destination": "/app/other", "receipt": "nr"}, "x")
    err = c.expect_error("no route for application destination /app/other")
    assert err["receipt-id"] == "nr"
    assert not hook.requests


def test_cannot_subscribe_to_app_destination(route_gateway, client):
    c = connected(client, route_gateway)
    c.subscribe("/app/greet", id="x")
    c.expect_error("cannot SUBSCRIBE to application destination /app/greet")


def test_stomppy_send_to_route(route_gateway, hook, client, stomppy):
    hook.reply = {"replies": [{"destination": "/topic/greetings.py", "body": {"json": True}}]}
    watcher = connected(client, route_gateway)
    watcher.subscribe("/topic/greetings.py", id="w", receipt="r")
    conn, lst = stomppy(route_gateway)
    conn.send("/app/greet", "from stomp.py", headers={"x-a": "b"}, receipt="py-send")
    lst.wait_receipt("py-send")
    j = hook.requests[-1]["json"]
    assert j["body"] == "from stomp.py" and j["headers"].get("x-a") == "b"
    m = watcher.expect_message()
    assert m.text.replace(" ", "") == '{"json":true}'


def test_concurrent_senders(route_gateway, hook, client):
    hook.delay = 0.4
    clients = [connected(client, route_gateway) for _ in range(5)]
    errors = []

    def go(c, i):
        try:
            c.send("/app/greet", f"c{i}", receipt=f"r{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(c, i)) for i, c in enumerate(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not errors
    assert sorted(r["json"]["body"] for r in hook.requests) == [f"c{i}" for i in range(5)]
    assert time.monotonic() - t0 < 1.6  # concurrent: one after another would take >= 2 s


def test_https_webhook_over_one_keep_alive_connection(gateway_factory, client, tmp_path):
    """An https:// route trusted through webhooks.tls.ca-file; its calls share one pooled
    keep-alive connection. A gateway that does not trust the CA fails the SEND with an ERROR."""
    from support.redis import TLSFiles
    from support.webhook import WebhookServer

    tls = TLSFiles(tmp_path)
    server = WebhookServer(tls=(tls.server, tls.server_key), keep_alive=True)
    try:
        route = f"""
routes:
  names: [secure]
  secure:
    destination: /app/secure
    url: {server.url}
    timeout-ms: 5000
"""
        gw = gateway_factory(yaml=route + f"webhooks:\n  tls:\n    ca-file: {tls.ca}\n")
        c = connected(client, gw)
        for i in range(5):
            c.send("/app/secure", f"m{i}", receipt=f"r{i}")
        assert [r["json"]["body"] for r in server.requests] == [f"m{i}" for i in range(5)]
        assert server.connections == 1

        untrusting = gateway_factory(yaml=route + f"webhooks:\n  tls:\n    ca-file: {tls.other_ca}\n")
        c2 = connected(client, untrusting)
        c2.send_frame("SEND", {"destination": "/app/secure"}, "x")
        err = c2.expect_error(timeout=10)
        assert err["message"].startswith(f"route for /app/secure failed: webhook {server.url} TLS with localhost:"), err["message"]
        assert len(server.requests) == 5
    finally:
        server.stop()


def test_a_broadcast_reply_redis_refuses_says_the_backend_accepted_the_message(hook, client, tmp_path):
    """Redis mode with Redis down: the backend processed the SEND, and its broadcast reply
    could not be published. The ERROR said only "route for /app/greet failed: redis
    unavailable …", which reads as not processed: a client sends it again and the backend
    processes it twice (a probe). It now says the backend accepted the message."""
    import subprocess

    from support.gateway import Gateway
    from support.process import free_port, terminate, wait_until
    from support.redis import redis_cli, redis_server_args

    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = None
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        gw = Gateway(name="webhook-reply-redis-down", sets=[
            f"redis.url=redis://127.0.0.1:{port}", "redis.unreachable-wait-ms=0", "routes.names=greet",
            "routes.greet.destination=/app/greet", "routes.greet.type=webhook", f"routes.greet.url={hook.url}"])
        hook.reply = {"replies": [{"destination": "/topic/greetings", "body": "Hello", "target": "broadcast"}]}
        sender = connected(client, gw)
        redis.kill()
        redis.wait(5)
        sender.send_frame("SEND", {"destination": "/app/greet", "receipt": "s"}, "world")
        error = sender.expect_error(timeout=10)
        assert error["receipt-id"] == "s"
        assert ("route for /app/greet failed: the backend accepted the message, but its broadcast reply was not "
                "published: ") in error["message"], error.headers
        assert len(hook.requests) == 1
    finally:
        terminate(redis)
        if gw:
            gw.stop()
