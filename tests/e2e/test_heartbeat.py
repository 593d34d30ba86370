"""Heart-beats with a gateway configured for 300 ms in both directions."""
import threading
import time

import pytest


@pytest.fixture(scope="module")
def hb_gateway(gateway_factory):
    return gateway_factory("stomp.heartbeat.send-ms=300", "stomp.heartbeat.receive-ms=300")


def count_heartbeats(c, seconds):
    """Reads for `seconds`; returns the number of EOLs and asserts no other frame came."""
    start = c.heartbeats
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = c.receive(max(deadline - time.monotonic(), 0.01))
            raise AssertionError(f"unexpected frame {frame.command}")
        except TimeoutError:
            pass
    return c.heartbeats - start


def test_connected_states_heartbeat_in_force(hb_gateway, client):
    # The server offers 300,300; the client cannot send (0) and wants 300: the server sends
    # every 300 ms and expects nothing.
    c = client(hb_gateway)
    assert c.connect(heartbeat="0,300")["heart-beat"] == "300,0"


def test_server_sends_eols_when_client_asks(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="0,300")
    n = count_heartbeats(c, 1.5)
    assert n >= 2, f"only {n} heart-beats in 1.5 s"
    assert not c.closed


def test_server_sends_nothing_when_client_does_not_want_heartbeats(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="0,0")
    assert count_heartbeats(c, 1.0) == 0
    # ... and does not expect any either: still connected after > tolerance * 300 ms.
    c.subscribe("/topic/hb.none", id="n", receipt="r")


def test_silent_client_is_closed_with_heartbeat_timeout(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="300,0")
    t0 = time.monotonic()
    err = c.expect_error("heart-beat timeout: nothing received from the client in time", timeout=5)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.5, f"closed too early ({elapsed:.2f}s); tolerance is 2 x 300 ms"
    assert err.body.decode()


def test_client_sending_eols_stays_connected(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="300,300")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        c.send_raw(b"\n")
        try:
            frame = c.receive(0.2)
            raise AssertionError(f"unexpected frame {frame.command} {frame.headers}")
        except TimeoutError:
            pass
    assert not c.closed
    c.subscribe("/topic/hb.alive", id="a", receipt="still-here")


def test_client_crlf_heartbeats_keep_connection(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="300,0")
    for _ in range(8):
        c.send_raw(b"\r\n")
        time.sleep(0.2)  # beat pacing is the test
    assert not c.closed
    c.subscribe("/topic/hb.crlf", id="c", receipt="alive")


def test_client_sending_frames_counts_as_heartbeat(hb_gateway, client):
    c = client(hb_gateway)
    c.connect(heartbeat="300,0")
    c.subscribe("/topic/hb.frames", id="f", receipt="r0")
    for i in range(8):
        time.sleep(0.2)  # frame pacing is the test (frames count as beats)
        c.send("/topic/hb.frames", str(i))
        assert c.expect_message().text == str(i)
    assert not c.closed


def test_stomppy_with_heartbeats_stays_connected(hb_gateway, client, stomppy):
    conn, lst = stomppy(hb_gateway, heartbeats=(300, 300))
    conn.subscribe("/topic/hb.py", id="1", receipt="r")
    lst.wait_receipt("r")
    time.sleep(2.2)  # time passing is the test: several heart-beat intervals
    assert conn.is_connected()
    assert not lst.errors, lst.errors
    assert lst.heartbeat_timeouts == 0
    pub = client(hb_gateway)
    pub.connect()
    pub.send("/topic/hb.py", "after 2s", receipt="p")
    (headers, body), = lst.wait_messages(1)
    assert body == "after 2s"


def test_stomppy_without_heartbeats_stays_connected(hb_gateway, stomppy):
    conn, lst = stomppy(hb_gateway, heartbeats=(0, 0))
    time.sleep(1.0)  # time passing is the test: idle without heart-beats
    assert conn.is_connected() and not lst.errors


def test_heartbeat_header_malformed(hb_gateway, client):
    c = client(hb_gateway)
    frame = c.connect(heartbeat="x", expect_connected=False)
    assert frame.command == "ERROR"
    assert frame["message"] == "malformed heart-beat header 'x': expected two non-negative integers 'cx,cy'"
    assert c.wait_closed(3)


@pytest.mark.parametrize("value", ["1", "-1,0", "1,2,3", "a,b", ""])
def test_heartbeat_header_malformed_variants(hb_gateway, client, value):
    c = client(hb_gateway)
    frame = c.connect(heartbeat=value, expect_connected=False)
    assert frame.command == "ERROR"
    assert frame["message"].startswith("malformed heart-beat header")


def test_server_uses_max_of_both_intervals_for_sending(hb_gateway, client):
    """Client wants beats every 1000 ms, server could do 300: server sends every 1000 ms."""
    c = client(hb_gateway)
    c.connect(heartbeat="0,1000")
    n = count_heartbeats(c, 2.5)
    assert 1 <= n <= 3, n  # every 300 ms would be about 8


def test_server_uses_max_of_both_intervals_for_expecting(hb_gateway, client):
    """Client promises beats every 1000 ms: 1.3 s of silence is within 2 x 1000 ms."""
    c = client(hb_gateway)
    c.connect(heartbeat="1000,0")
    time.sleep(1.3)  # time passing is the test: silence within 2 x 1000 ms
    c.subscribe("/topic/hb.max", id="m", receipt="still-connected")


def test_heartbeats_during_slow_route_call_keep_session(gateway_factory, webhook, client):
    yaml = f"""
routes:
  names: [slow]
  slow:
    destination: /app/slow
    type: webhook
    url: {webhook.url}
    timeout-ms: 5000
"""
    gw = gateway_factory("stomp.heartbeat.send-ms=300", "stomp.heartbeat.receive-ms=300", yaml=yaml)
    webhook.reset()
    webhook.delay = 1.5
    c = client(gw)
    c.connect(heartbeat="300,0")
    stop = threading.Event()

    def beats():
        while not stop.is_set():
            try:
                c.send_raw(b"\n")
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.1)  # beat pacing

    t = threading.Thread(target=beats, daemon=True)
    t.start()
    try:
        c.send_frame("SEND", {"destination": "/app/slow", "receipt": "slow"}, "x")
        c.expect_receipt("slow", timeout=5)
        time.sleep(1.0)  # time passing is the test: only beats keep the session
        c.expect_nothing(0.3)
        assert not c.closed
    finally:
        stop.set()
        t.join(2)
        webhook.reset()


@pytest.mark.parametrize("offer", ["9223372036854775807,0", "4611686018427387904,4611686018427387904"])
def test_an_absurd_heartbeat_is_clamped_and_harms_nobody(hb_gateway, client, offer):
    # A CONNECT asking for heart-beats of 2^62 ms or more once crashed the process (the
    # timeout's arithmetic trapped). Now the interval in force is at most 2^31 - 1 ms.
    other = client(hb_gateway)
    other.connect()
    other.subscribe("/topic/hb.absurd", id="1", receipt="s")
    c = client(hb_gateway)
    cx, cy = (int(v) for v in offer.split(","))
    sends, expects = c.connect(heartbeat=offer)["heart-beat"].split(",")
    assert int(expects) == 2147483647
    assert int(sends) == (2147483647 if cy else 0)
    c.send("/topic/hb.absurd", "still here", receipt="r")
    assert other.receive(5).body == b"still here"
    assert hb_gateway.proc.poll() is None
