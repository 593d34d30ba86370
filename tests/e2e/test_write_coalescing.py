"""Write coalescing (`server.write-coalesce-us`): under a burst, flush passes are spaced and a
connection gets several messages per write. Nothing may be lost, duplicated or reordered,
for our client and for stomp.py, and every message stays its own WebSocket message."""
import subprocess

from gatewayproc import BINARY


def test_out_of_range_setting_is_refused():
    out = subprocess.run([BINARY, "--port", "0", "--set", "server.write-coalesce-us=200000"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "server.write-coalesce-us must be 0…100000" in out.stderr


def test_burst_arrives_complete_and_in_order_with_a_long_interval(gateway_factory, client, stomppy):
    # 50 ms: far longer than the burst, so most of it is flushed together.
    gw = gateway_factory("server.write-coalesce-us=50000")
    subs = []
    for i in range(3):
        s = client(gw)
        s.connect()
        s.subscribe("/topic/burst", id="0", receipt="r")
        subs.append(s)
    conn, listener = stomppy(gw)
    conn.subscribe("/topic/burst", id="py", ack="auto", headers={"receipt": "py-sub"})
    listener.wait_receipt("py-sub")
    pub = client(gw)
    pub.connect()
    n = 200
    for i in range(n):
        pub.send("/topic/burst", f"m{i}")
    pub.send("/topic/burst", "last", receipt="done")  # waits for the RECEIPT
    for s in subs:
        got = [s.expect_message().text for _ in range(n + 1)]
        assert got == [f"m{i}" for i in range(n)] + ["last"]
        assert len(s.ws_messages) >= n + 1  # one WebSocket message per STOMP frame
        s.expect_nothing(0.2)
    got = [body for _, body in listener.wait_messages(n + 1)]
    assert got == [f"m{i}" for i in range(n)] + ["last"]
