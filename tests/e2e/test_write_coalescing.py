"""Write coalescing (`server.write-coalesce-us`): under a burst, flush passes are spaced and a
connection gets several messages per write. Nothing may be lost, duplicated or reordered,
for our client and for stomp.py, and every message stays its own WebSocket message."""
import subprocess

from burst import assert_burst_arrives_complete
from gatewayproc import BINARY


def test_out_of_range_setting_is_refused():
    out = subprocess.run([BINARY, "--port", "0", "--set", "server.write-coalesce-us=200000"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "server.write-coalesce-us must be 0…100000" in out.stderr


def test_burst_arrives_complete_and_in_order_with_a_long_interval(gateway_factory, client, stomppy):
    # 50 ms: far longer than the burst, so most of it is flushed together.
    gw = gateway_factory("server.write-coalesce-us=50000")
    assert_burst_arrives_complete(gw, client, stomppy, "/topic/burst", 200)
