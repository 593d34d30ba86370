"""Protocol edge cases: repeated headers, mixed-version fan-out, id reuse, DISCONNECT."""
import pytest


def connected(client, gateway, version="1.2"):
    c = client(gateway)
    c.connect(version=version)
    return c


def subscribe_any(c, destination, id):
    headers = {"destination": destination, "receipt": "sub"}
    if c.version != "1.0":
        headers["id"] = id
    c.send_frame("SUBSCRIBE", headers)
    c.expect_receipt("sub")


def test_repeated_header_first_wins(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/rep", id="r", receipt="r")
    pub = connected(client, gateway)
    pub.send_raw(b"SEND\ndestination:/topic/rep\nx-rep:first\nx-rep:second\nreceipt:p\n\nb\x00")
    pub.expect_receipt("p")
    m = sub.expect_message()
    assert m["x-rep"] == "first"


def test_repeated_destination_first_wins(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/rep.**", id="r", receipt="r")
    pub = connected(client, gateway)
    pub.send_raw(b"SEND\ndestination:/topic/rep.one\ndestination:/topic/rep.two\nreceipt:p\n\nb\x00")
    pub.expect_receipt("p")
    assert sub.expect_message()["destination"] == "/topic/rep.one"


def test_mixed_version_subscribers_get_their_encoding(gateway, client):
    subs = {v: connected(client, gateway, v) for v in ("1.0", "1.1", "1.2")}
    for v, s in subs.items():
        subscribe_any(s, "/topic/mixed.versions", id="m")
    pub = connected(client, gateway)
    pub.send("/topic/mixed.versions", "hi", headers={"x-url": "http://h:1/p", "x-back": "a\\b"}, receipt="p")
    for v, s in subs.items():
        m = s.expect_message()
        assert m["x-url"] == "http://h:1/p", v
        assert m["x-back"] == "a\\b", v
        assert m.text == "hi"


def test_1_0_subscriber_gets_newlines_in_values_sanitized(gateway, client):
    """STOMP 1.0 cannot carry a newline in a header value; it must not break the frame."""
    sub = connected(client, gateway, "1.0")
    subscribe_any(sub, "/topic/nl10", id="n")
    pub = connected(client, gateway)
    pub.send("/topic/nl10", "body", headers={"x-nl": "a\n\ninjected:1"}, receipt="p")
    m = sub.expect_message()
    assert m.text == "body"
    assert "\n" not in m["x-nl"]
    assert "injected" not in m.headers
    assert m["destination"] == "/topic/nl10"


def test_1_1_subscriber_never_gets_undefined_escape(gateway, client):
    sub = connected(client, gateway, "1.1")
    sub.subscribe("/topic/cr11", id="c", receipt="r")
    pub = connected(client, gateway)
    pub.send("/topic/cr11", "body", headers={"x-cr": "a\rb"}, receipt="p")
    m = sub.expect_message()  # our 1.1 parser rejects '\r' like a strict 1.1 client
    assert m.text == "body"


def test_1_1_publisher_cr_escape_is_an_error_1_2_publisher_not(gateway, client):
    """`\r` is an escape of STOMP 1.2 only: from a 1.1 session it is undefined, a fatal error."""
    sub = connected(client, gateway)
    sub.subscribe("/topic/cresc", id="c", receipt="r")
    ok = connected(client, gateway, "1.2")
    ok.send_raw(b"SEND\ndestination:/topic/cresc\nx:1\\r2\nreceipt:p\n\nb\x00")
    ok.expect_receipt("p")
    assert sub.expect_message()["x"] == "1\r2"
    old = connected(client, gateway, "1.1")
    old.send_raw(b"SEND\ndestination:/topic/cresc\nreceipt:q\nx:1\\r2\n\nb\x00")
    error = old.expect_error("undefined escape sequence '\\r' in header")
    assert error["receipt-id"] == "q"


def test_a_header_that_is_not_utf8_is_an_error(gateway, client):
    """A binary WebSocket message's header bytes are not UTF-8: an ERROR, not U+FFFD."""
    c = connected(client, gateway)
    c.send_raw(b"SEND\nreceipt:r1\ndestination:/topic/\xfe\n\nhi\x00", binary=True)
    error = c.expect_error("header is not valid UTF-8")
    assert error["receipt-id"] == "r1"


def test_subscription_id_reuse_after_unsubscribe(gateway, client):
    c = connected(client, gateway)
    c.subscribe("/topic/reuse.a", id="x", receipt="1")
    c.unsubscribe("x", receipt="2")
    c.subscribe("/topic/reuse.b", id="x", receipt="3")
    c.send("/topic/reuse.a", "a")
    c.send("/topic/reuse.b", "b")
    m = c.expect_message()
    assert m.text == "b" and m["subscription"] == "x"
    c.expect_nothing(0.2)


def test_1_0_unsubscribe_by_destination(gateway, client):
    c = connected(client, gateway, "1.0")
    subscribe_any(c, "/topic/unsub10", id=None)
    c.send_frame("UNSUBSCRIBE", {"destination": "/topic/unsub10", "receipt": "u"})
    c.expect_receipt("u")
    gateway.publish("/topic/unsub10", "x")
    c.expect_nothing(0.3)


def test_same_client_two_subscriptions_same_destination(gateway, client):
    c = connected(client, gateway)
    c.subscribe("/topic/twice", id="1", receipt="a")
    c.subscribe("/topic/twice", id="2", receipt="b")
    gateway.publish("/topic/twice", "dup")
    msgs = c.receive_many(2)
    assert sorted(m["subscription"] for m in msgs) == ["1", "2"]
    assert len({m["message-id"] for m in msgs}) == 1


def test_disconnect_without_receipt_closes(gateway, client):
    c = connected(client, gateway)
    c.send_frame("DISCONNECT")
    assert c.wait_closed(3)


def test_frames_after_disconnect_are_ignored(gateway, client):
    watcher = connected(client, gateway)
    watcher.subscribe("/topic/after.disc", id="w", receipt="r")
    c = connected(client, gateway)
    c.send_raw(b"DISCONNECT\nreceipt:d\n\n\x00SEND\ndestination:/topic/after.disc\n\nlate\x00")
    c.expect_receipt("d")
    assert c.wait_closed(3)
    watcher.expect_nothing(0.3)


def test_closed_sessions_release_subscriptions(gateway, client):
    base = gateway.wait_health(lambda j: True)["subscriptions"]
    cs = [connected(client, gateway) for _ in range(5)]
    for i, c in enumerate(cs):
        c.subscribe(f"/topic/release.{i}", id="1", receipt="r")
    assert gateway.health()["subscriptions"] == base + 5
    for c in cs:
        c.close()
    h = gateway.wait_health(lambda j: j["subscriptions"] == base)
    assert h["subscriptions"] == base
