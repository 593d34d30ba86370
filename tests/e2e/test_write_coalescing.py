"""Write coalescing (`server.write-coalesce-us`, and `server.write-coalesce-busy-us` while a loop
is in busy mode): under a burst, flush passes are spaced and a
connection gets several messages per write. Nothing may be lost, duplicated or reordered,
for our client and for stomp.py, and every message stays its own WebSocket message."""
import subprocess

import pytest

from support.burst import assert_burst_arrives_complete, loops_busy, publish_until, subscribed_clients
from support.paths import BINARY


@pytest.mark.parametrize("key", ["server.write-coalesce-us", "server.write-coalesce-busy-us"])
def test_out_of_range_setting_is_refused(key):
    out = subprocess.run([BINARY, "--port", "0", "--set", f"{key}=200000"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and f"{key} must be 0…100000" in out.stderr


def test_burst_arrives_complete_and_in_order_with_a_long_interval(gateway_factory, client, stomppy):
    # 50 ms: far longer than the burst, so most of it is flushed together.
    gw = gateway_factory("server.write-coalesce-us=50000")
    assert_burst_arrives_complete(gw, client, stomppy, "/topic/burst", 200)


def test_messages_arrive_complete_and_in_order_in_busy_mode(gateway_factory, client, stomppy):
    # 1 %: a steady stream puts the loop in busy mode, whose passes are then 50 ms apart.
    gw = gateway_factory("server.busy-percent=1", "server.threads=1", "server.write-coalesce-busy-us=50000")
    subs = subscribed_clients(gw, client, "/topic/busy", 3)
    conn, listener = stomppy(gw)
    conn.subscribe("/topic/busy", id="py", ack="auto", headers={"receipt": "py-sub"})
    listener.wait_receipt("py-sub")
    pub = client(gw)
    pub.connect()
    sent = []
    publish_until(pub, "/topic/busy", sent, lambda: loops_busy(gw) == 1, "busy mode")
    for _ in range(300):  # a burst while busy
        sent.append(f"m{len(sent)}")
        pub.send("/topic/busy", sent[-1])
    sent.append("last")
    pub.send("/topic/busy", "last", receipt="done")
    for s in subs:
        assert [s.expect_message().text for _ in range(len(sent))] == sent
        assert len(s.ws_messages) >= len(sent)  # one WebSocket message per STOMP frame
        s.expect_nothing(0.2)
    assert [body for _, body in listener.wait_messages(len(sent))] == sent
