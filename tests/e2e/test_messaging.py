"""Publish/subscribe: fan-out, headers, escaping, ordering, wildcards, unsubscribe, acks,
and how STOMP frames map onto WebSocket messages."""
import pytest
import websocket

from support.stompclient import encode_frame


def connected(client, gateway, version="1.2", **kw):
    c = client(gateway, **kw)
    c.connect(version=version)
    return c


def test_fanout_to_three_subscribers_exactly_once(gateway, client):
    subs = [connected(client, gateway) for _ in range(3)]
    for i, s in enumerate(subs):
        s.subscribe("/topic/fanout", id=f"s{i}", receipt="r")
    pub = connected(client, gateway)
    pub.send("/topic/fanout", "hello all", headers={"x-user": "alice", "content-type": "text/plain"}, receipt="p")
    ids = set()
    for i, s in enumerate(subs):
        m = s.expect_message()
        assert m.text == "hello all"
        assert m["destination"] == "/topic/fanout"
        assert m["subscription"] == f"s{i}"
        assert m["x-user"] == "alice"
        assert m["content-type"] == "text/plain"
        assert m["content-length"] == str(len("hello all"))
        assert "ack" not in m.headers
        ids.add(m["message-id"])
        s.expect_nothing(0.3)
    assert len(ids) == 1  # one message, one id, delivered to each subscription
    pub.expect_nothing(0.1)  # publisher is not subscribed


def test_stomppy_three_subscribers(gateway, client, stomppy):
    listeners = []
    for i in range(3):
        conn, lst = stomppy(gateway)
        conn.subscribe("/topic/fanout.py", id=str(i), receipt=f"r{i}")
        lst.wait_receipt(f"r{i}")
        listeners.append(lst)
    pub = connected(client, gateway)
    pub.send("/topic/fanout.py", "to stomp.py", headers={"x-n": "1"}, receipt="p")
    for lst in listeners:
        (headers, body), = lst.wait_messages(1)
        assert body == "to stomp.py" and headers["x-n"] == "1"
    # A later message on the same subscription is the condition: a duplicate would come first.
    pub.send("/topic/fanout.py", "marker", receipt="m")
    for lst in listeners:
        assert [body for _, body in lst.wait_messages(2)] == ["to stomp.py", "marker"]


def test_message_ids_are_unique(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/ids", receipt="r")
    for i in range(20):
        sub.send("/topic/ids", str(i))
    ids = [m["message-id"] for m in sub.receive_many(20)]
    assert len(set(ids)) == 20


def test_reserved_headers_are_not_passed_through(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/reserved", id="mine", receipt="r")
    pub = connected(client, gateway)
    pub.send("/topic/reserved", "x", headers={"subscription": "fake", "message-id": "fake", "ack": "fake", "keep": "yes"})
    m = sub.expect_message()
    assert m["subscription"] == "mine"
    assert m["message-id"] != "fake"
    assert "ack" not in m.headers
    assert m["keep"] == "yes"
    assert [n for n, _ in m.header_list].count("subscription") == 1


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_header_escaping_round_trip(gateway, client, version):
    value = "a:b\nc\\d"
    sub = connected(client, gateway, version)
    sub.subscribe("/topic/escape", id="e", receipt="r")
    pub = connected(client, gateway, version)
    pub.send("/topic/escape", "esc", headers={"x-tricky": value, "x:name": "colon-in-name"}, receipt="p")
    m = sub.expect_message()
    assert m["x-tricky"] == value
    assert m["x:name"] == "colon-in-name"


def test_header_escaping_carriage_return_1_2(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/escape.cr", id="e", receipt="r")
    sub.send("/topic/escape.cr", "cr", headers={"x-cr": "a\rb"})
    assert sub.expect_message()["x-cr"] == "a\rb"


def test_stomppy_header_with_colon(gateway, client, stomppy):
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/escape.py", id="1", receipt="r")
    lst.wait_receipt("r")
    pub = connected(client, gateway)
    pub.send("/topic/escape.py", "b", headers={"x-url": "http://x:1/y"}, receipt="p")
    (headers, body), = lst.wait_messages(1)
    assert headers["x-url"] == "http://x:1/y"


def test_1_0_headers_are_not_escaped(gateway, client):
    sub = connected(client, gateway, "1.0")
    sub.send_frame("SUBSCRIBE", {"destination": "/topic/plain10", "receipt": "r"})
    sub.expect_receipt("r")
    pub = connected(client, gateway, "1.0")
    pub.send("/topic/plain10", "p", headers={"x-raw": "a\\cb"}, receipt="p")
    assert sub.expect_message()["x-raw"] == "a\\cb"


def test_ordering_500_messages_several_subscribers(gateway, client, stomppy):
    subs = [connected(client, gateway) for _ in range(3)]
    for s in subs:
        s.subscribe("/topic/order", id="o", receipt="r")
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/order", id="py", receipt="rp")
    lst.wait_receipt("rp")
    pub = connected(client, gateway)
    n = 500
    batch = b"".join(encode_frame("SEND", {"destination": "/topic/order", "seq": str(i)}, f"m{i}") for i in range(n))
    pub.send_raw(batch)
    pub.send("/topic/order", "end", headers={"seq": "end"}, receipt="done")
    for s in subs:
        msgs = s.receive_many(n + 1, timeout=15)
        assert [m["seq"] for m in msgs] == [str(i) for i in range(n)] + ["end"]
        assert [m.text for m in msgs[:n]] == [f"m{i}" for i in range(n)]
        s.expect_nothing(0.2)
    got = lst.wait_messages(n + 1, timeout=15)
    assert [h["seq"] for h, _ in got] == [str(i) for i in range(n)] + ["end"]


@pytest.mark.parametrize("pattern,matching,non_matching", [
    ("/topic/stock.*", ["/topic/stock.AAPL", "/topic/stock.MSFT"], ["/topic/stock.US.AAPL", "/topic/stock", "/topic/other.AAPL"]),
    ("/topic/stock.**", ["/topic/stock.AAPL", "/topic/stock.US.AAPL", "/topic/stock.US/NY.X"], ["/topic/stock", "/topic/stocks.A"]),
    ("/topic/*/news", ["/topic/sport/news", "/topic/tech/news"], ["/topic/sport/tv/news", "/topic/news"]),
    ("/topic/a/**", ["/topic/a/b", "/topic/a/b/c", "/topic/a/b.c"], ["/topic/a", "/topic/ab/c"]),
])
def test_wildcards(gateway, client, pattern, matching, non_matching):
    sub = connected(client, gateway)
    sub.subscribe(pattern, id="w", receipt="r")
    pub = connected(client, gateway)
    for dest in non_matching + matching:
        pub.send(dest, dest, receipt="p")
    got = [m["destination"] for m in sub.receive_many(len(matching))]
    assert got == matching
    for m_dest in got:
        assert m_dest in matching
    sub.expect_nothing(0.3)


def test_wildcard_subscription_message_headers(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/wild.*", id="w1", receipt="r1")
    sub.subscribe("/topic/wild.exact", id="w2", receipt="r2")
    sub.send("/topic/wild.exact", "both")
    msgs = sub.receive_many(2)
    assert sorted(m["subscription"] for m in msgs) == ["w1", "w2"]
    assert all(m["destination"] == "/topic/wild.exact" for m in msgs)
    sub.expect_nothing(0.2)


def test_unsubscribe_stops_delivery(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/unsub", id="u", receipt="r")
    pub = connected(client, gateway)
    pub.send("/topic/unsub", "before", receipt="p1")
    assert sub.expect_message().text == "before"
    sub.unsubscribe("u", receipt="ur")
    pub.send("/topic/unsub", "after", receipt="p2")
    sub.expect_nothing(0.4)


def test_stomppy_unsubscribe(gateway, client, stomppy):
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/unsub.py", id="1", receipt="r")
    lst.wait_receipt("r")
    pub = connected(client, gateway)
    pub.send("/topic/unsub.py", "one", receipt="p1")
    lst.wait_messages(1)
    conn.subscribe("/topic/unsub.py.marker", id="2", receipt="r2")
    lst.wait_receipt("r2")
    conn.unsubscribe(id="1", receipt="u")
    lst.wait_receipt("u")
    pub.send("/topic/unsub.py", "two", receipt="p2")
    # The marker, published after "two" by the same publisher, is the condition: "two" would come first.
    pub.send("/topic/unsub.py.marker", "marker", receipt="p3")
    assert [body for _, body in lst.wait_messages(2)] == ["one", "marker"]


@pytest.mark.parametrize("ack", ["client", "client-individual"])
def test_ack_header_in_client_modes_1_2(gateway, client, ack):
    sub = connected(client, gateway)
    sub.subscribe("/topic/acks", id="a", ack=ack, receipt="r")
    sub.send("/topic/acks", "ack me")
    m = sub.expect_message()
    assert m["ack"]
    sub.send_frame("ACK", {"id": m["ack"], "receipt": "a1"})
    sub.expect_receipt("a1")
    sub.send_frame("NACK", {"id": m["ack"], "receipt": "n1"})
    sub.expect_receipt("n1")


def test_ack_1_1_uses_message_id_and_subscription(gateway, client):
    sub = connected(client, gateway, "1.1")
    sub.subscribe("/topic/acks11", id="a", ack="client-individual", receipt="r")
    sub.send("/topic/acks11", "x")
    m = sub.expect_message()
    assert "ack" in m.headers
    sub.send_frame("ACK", {"message-id": m["message-id"], "subscription": "a", "receipt": "a1"})
    sub.expect_receipt("a1")
    sub.send_frame("NACK", {"message-id": m["message-id"], "subscription": "a", "receipt": "n1"})
    sub.expect_receipt("n1")


def test_ack_1_0_with_message_id(gateway, client):
    sub = connected(client, gateway, "1.0")
    sub.send_frame("SUBSCRIBE", {"destination": "/topic/acks10", "ack": "client", "receipt": "r"})
    sub.expect_receipt("r")
    sub.send("/topic/acks10", "x")
    m = sub.expect_message()
    sub.send_frame("ACK", {"message-id": m["message-id"], "receipt": "a1"})
    sub.expect_receipt("a1")


def test_stomppy_client_ack(gateway, client, stomppy):
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/acks.py", id="9", ack="client-individual", receipt="r")
    lst.wait_receipt("r")
    pub = connected(client, gateway)
    pub.send("/topic/acks.py", "x", receipt="p")
    (headers, _), = lst.wait_messages(1)
    assert headers.get("ack")
    conn.ack(headers["ack"], receipt="ack1")
    lst.wait_receipt("ack1")


def test_frame_split_across_three_websocket_messages(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/split", id="s", receipt="r")
    pub = connected(client, gateway)
    raw = encode_frame("SEND", {"destination": "/topic/split", "x-part": "yes", "receipt": "sp"}, "split body")
    a, b = len(raw) // 3, 2 * len(raw) // 3
    for part in (raw[:a], raw[a:b], raw[b:]):
        pub.send_raw(part)
    pub.expect_receipt("sp")
    m = sub.expect_message()
    assert m.text == "split body" and m["x-part"] == "yes"


def test_three_frames_in_one_websocket_message(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/batch", id="b", receipt="r")
    pub = connected(client, gateway)
    raw = b"".join(encode_frame("SEND", {"destination": "/topic/batch", "receipt": f"b{i}"}, f"n{i}") for i in range(3))
    pub.send_raw(raw)
    for i in range(3):
        pub.expect_receipt(f"b{i}")
    assert [m.text for m in sub.receive_many(3)] == ["n0", "n1", "n2"]


def test_frames_without_content_length_and_with_crlf(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/crlf", id="c", receipt="r")
    sub.send_raw(b"SEND\r\ndestination:/topic/crlf\r\nreceipt:c1\r\n\r\nno length\x00\n\n")
    frames = sub.receive_commands("RECEIPT", "MESSAGE")
    assert frames["RECEIPT"]["receipt-id"] == "c1"
    assert frames["MESSAGE"].text == "no length"


def test_binary_websocket_frames_and_binary_body(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/binary", id="b", receipt="r")
    pub = connected(client, gateway)
    body = bytes([0, 1, 2, 255, 254, 0, 10]) * 10
    pub.send("/topic/binary", body, headers={"content-type": "application/octet-stream"}, receipt="bp", binary=True)
    m = sub.expect_message()
    assert m.body == body
    assert m["content-length"] == str(len(body))
    assert sub.ws_messages[-1][0] == websocket.ABNF.OPCODE_BINARY
    # A UTF-8 body sent in a binary WS frame arrives as a text WS frame.
    pub.send("/topic/binary", "text body", receipt="tp", binary=True)
    assert sub.expect_message().text == "text body"
    assert sub.ws_messages[-1][0] == websocket.ABNF.OPCODE_TEXT


def test_empty_body(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/empty", id="e", receipt="r")
    sub.send("/topic/empty", b"")
    m = sub.expect_message()
    assert m.body == b"" and m["content-length"] == "0"


def test_large_message_under_limit(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/large", id="l", receipt="r")
    body = "x" * 200_000
    sub.send("/topic/large", body)
    assert sub.expect_message().text == body
