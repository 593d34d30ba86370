"""A burst on one topic, checked at every subscriber: complete, in order, no duplicates, one
WebSocket message per STOMP frame. Used by the write-coalescing and TCP_NODELAY tests."""


def assert_burst_arrives_complete(gw, client, stomppy, destination: str, n: int, subscribers: int = 3):
    subs = []
    for _ in range(subscribers):
        s = client(gw)
        s.connect()
        s.subscribe(destination, id="0", receipt="r")
        subs.append(s)
    conn, listener = stomppy(gw)
    conn.subscribe(destination, id="py", ack="auto", headers={"receipt": "py-sub"})
    listener.wait_receipt("py-sub")
    pub = client(gw)
    pub.connect()
    for i in range(n):
        pub.send(destination, f"m{i}")
    pub.send(destination, "last", receipt="done")  # waits for the RECEIPT
    want = [f"m{i}" for i in range(n)] + ["last"]
    for s in subs:
        assert [s.expect_message().text for _ in range(n + 1)] == want
        assert len(s.ws_messages) >= n + 1  # one WebSocket message per STOMP frame
        s.expect_nothing(0.2)
    assert [body for _, body in listener.wait_messages(n + 1)] == want
    return subs
