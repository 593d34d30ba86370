"""limits.max-pending-bytes-total: when the connections together hold more outbound bytes than
the cap, the slowest consumers are closed (slow consumer); readers that keep up go on and get
everything, in order."""
import socket
import threading

from support.process import wait_until

PAYLOAD = "m" * 100_000
MESSAGES = 160  # 16 MB for each subscriber


def test_the_slowest_consumers_are_closed_past_the_instance_cap(gateway_factory, client):
    # Each connection alone may hold 64 MiB: only the instance-wide cap (8 MiB) can bind.
    gw = gateway_factory("limits.bytes-per-second=0", "limits.max-pending-bytes=67108864", "limits.max-pending-bytes-total=8388608")
    base = gw.health()["connections"]
    slow = []
    for n in range(3):
        c = client(gw, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        c.connect()
        c.subscribe("/topic/flood", id="f", receipt=f"s{n}")
        slow.append(c)
    fast = client(gw)
    fast.connect()
    fast.subscribe("/topic/flood", id="f", receipt="fast")
    got: list[str] = []
    failure: list[BaseException] = []

    def read():
        try:
            for _ in range(MESSAGES):
                got.append(fast.expect_message(timeout=30)["n"])
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            failure.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pub = client(gw)
    pub.connect()
    for n in range(MESSAGES):
        pub.send("/topic/flood", PAYLOAD, headers={"n": str(n)}, receipt=f"p{n}")
    reader.join(60)
    assert not failure, failure
    assert got == [str(n) for n in range(MESSAGES)], "the reader that kept up got every message, in order"
    # The three that never read are closed (a sweep a second), and counted.
    wait_until(lambda: gw.health()["connections"] == base + 2, timeout=15, what="the slow consumers closed")
    assert gw.metric("switchboard_outbound_shed_sessions_total") == 3
    assert gw.session_errors("slow_consumer") == 3
    assert not fast.closed and not pub.closed
    wait_until(lambda: gw.metric("switchboard_outbound_pending_bytes") < 1_000_000, timeout=10, what="the memory freed")
    # If a closed one reads now, what it finds ends with the ERROR saying why, or just the close.
    for c in slow:
        frames = []
        try:
            while True:
                frames.append(c.receive(2))
        except Exception:  # noqa: BLE001 (the connection is closed)
            pass
        errors = [f for f in frames if f.command == "ERROR"]
        if errors:
            assert "limits.max-pending-bytes-total (8388608 bytes)" in errors[0]["message"]


def test_without_a_cap_nothing_is_closed_for_it(gateway_factory, client):
    gw = gateway_factory("limits.bytes-per-second=0", "limits.max-pending-bytes=67108864", "limits.max-pending-bytes-total=0")
    slow = client(gw, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    slow.connect()
    slow.subscribe("/topic/flood", id="f", receipt="s")
    pub = client(gw)
    pub.connect()
    for n in range(MESSAGES):
        pub.send("/topic/flood", PAYLOAD, headers={"n": str(n)}, receipt=f"p{n}")
    # Held (it is under its own 64 MiB), reported, and not shed.
    wait_until(lambda: gw.metric("switchboard_outbound_pending_bytes") > 8_000_000, timeout=10, what="the bytes held reported")
    assert gw.metric("switchboard_outbound_shed_sessions_total") == 0
    assert gw.session_errors("slow_consumer") == 0
