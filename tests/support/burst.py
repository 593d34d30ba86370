"""A burst on one topic, checked at every subscriber: complete, in order, no duplicates, one
WebSocket message per STOMP frame; and a steady stream that runs until the gateway's event
loop is busy. Used by the write-coalescing and TCP_NODELAY tests."""
import time


def assert_burst_arrives_complete(gw, client, stomppy, destination: str, n: int, subscribers: int = 3):
    subs = subscribed_clients(gw, client, destination, subscribers)
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


def publish_until(pub, destination: str, sent: list, done, what: str, timeout: float = 10):
    """Publishes a steady stream (20 messages, 2 ms apart, between checks) until `done()`;
    appends every body sent to `sent`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} never happened"
        for _ in range(20):
            sent.append(f"m{len(sent)}")
            pub.send(destination, sent[-1])
            time.sleep(0.002)  # a steady stream is the load asked for


def loops_busy(gw) -> float:
    """Event loops of the gateway in busy mode now."""
    return gw.metric("switchboard_event_loops_busy")


def subscribed_clients(gw, client, destination: str, n: int) -> list:
    """`n` connected clients, each subscribed to `destination` (id "0", receipt awaited)."""
    subs = []
    for _ in range(n):
        s = client(gw)
        s.connect()
        s.subscribe(destination, id="0", receipt="r")
        subs.append(s)
    return subs
