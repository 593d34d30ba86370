"""Abuse limits: each one with its exact error, a healthy session unaffected, counted in /metrics."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from support.process import wait_until
from support.rawws import OP_CONT, OP_PING, OP_TEXT, RawWebSocket, build_frame, stomp_frames
from support.security import HMAC_SECRET, bearer, expect_healthy, make_token, upgrade_request
from support.stompclient import StompClient, encode_frame, send_bursts_until



@pytest.fixture(scope="module")
def frames_gw(gw):
    return gw("limits.max-subscriptions=3", "limits.max-frame-bytes=1024", "limits.max-header-line-bytes=256",
              "limits.max-headers=8")


@pytest.fixture
def healthy_of(clients):
    made = []

    def make(g):
        c = clients(g)
        c.subscribe("/topic/health", "h", receipt="h")
        made.append((c, g))
        return c
    yield make
    for c, g in made:
        expect_healthy(c, g)


def test_max_subscriptions(frames_gw, clients, healthy_of):
    healthy_of(frames_gw)
    before = frames_gw.session_errors("limit")
    c = clients(frames_gw)
    for i in range(3):
        c.subscribe(f"/topic/s{i}", str(i), receipt=f"r{i}")
    c.send_frame("SUBSCRIBE", {"destination": "/topic/s3", "id": "3", "receipt": "r3"})
    f = c.expect_error("too many subscriptions (limit 3)")
    assert f.get("receipt-id") == "r3"
    assert frames_gw.session_errors("limit") >= before + 1
    # unsubscribing frees a slot
    c2 = clients(frames_gw)
    for i in range(3):
        c2.subscribe(f"/topic/s{i}", str(i), receipt=f"r{i}")
    c2.unsubscribe("0", receipt="u")
    c2.subscribe("/topic/s9", "9", receipt="r9")


def test_max_frame_bytes(frames_gw, clients, healthy_of):
    healthy_of(frames_gw)
    c = clients(frames_gw)
    c.send("/topic/big", "x" * 900, receipt="fits")
    c.send_frame("SEND", {"destination": "/topic/big"}, "x" * 1500)
    c.expect_error("frame too large (limit 1024 bytes)")
    # without content-length too (the decoder must stop at the limit, not wait for a NUL)
    c = clients(frames_gw)
    c.send_raw(b"SEND\ndestination:/topic/big\n\n" + b"y" * 1800)
    c.expect_error("frame too large (limit 1024 bytes)")


def test_max_header_line_bytes(frames_gw, clients, healthy_of):
    healthy_of(frames_gw)
    c = clients(frames_gw)
    c.send("/topic/h", "ok", headers={"x-small": "a" * 200}, receipt="fits")
    c.send_frame("SEND", {"destination": "/topic/h", "x-long": "a" * 400})
    c.expect_error("header line too long (limit 256 bytes)")
    # before CONNECT as well
    c = clients(frames_gw, connect=False)
    c.send_raw(encode_frame("CONNECT", {"accept-version": "1.2", "host": "h", "x": "b" * 600}))
    c.expect_error("header line too long (limit 256 bytes)")


def test_max_headers(frames_gw, clients, healthy_of):
    healthy_of(frames_gw)
    c = clients(frames_gw)
    c.send("/topic/h", "ok", headers={f"x-{i}": "v" for i in range(5)}, receipt="fits")  # 8 lines
    c.send_frame("SEND", {"destination": "/topic/h", **{f"x-{i}": "v" for i in range(20)}})
    c.expect_error("too many headers (limit 8)")


# -- rates ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rate_gw(gw):
    # The byte rate's burst holds one frame of limits.max-frame-bytes at least: small here, so
    # that the burst is the rate's 2x.
    return gw("limits.frames-per-second=10", "limits.bytes-per-second=3000", "limits.max-frame-bytes=2048", "limits.max-body-bytes=2048")


def test_frames_per_second(rate_gw, clients, healthy_of):
    healthy_of(rate_gw)
    before = rate_gw.session_errors("limit")
    # a burst within 2x the rate is fine
    ok = clients(rate_gw)
    ok.send_raw(b"".join(encode_frame("SEND", {"destination": "/topic/r"}, "x") for _ in range(12)))
    ok.send("/topic/r", "x", receipt="burst-ok")
    c = clients(rate_gw)
    c.send_raw(b"".join(encode_frame("SEND", {"destination": "/topic/r"}, "x") for _ in range(60)))
    c.expect_error("rate limit exceeded: more than 10 frames per second")
    assert rate_gw.session_errors("limit") >= before + 1
    # sustained at the rate is fine
    slow = clients(rate_gw)
    for i in range(12):
        slow.send_frame("SEND", {"destination": "/topic/r"}, "x")
        time.sleep(0.15)  # pacing is the test: sustained at the rate
    slow.send("/topic/r", "x", receipt="sustained-ok")


def test_bytes_per_second(rate_gw, clients, healthy_of):
    healthy_of(rate_gw)
    c = clients(rate_gw)
    for _ in range(10):  # 10 frames (under the frame rate), ~9 KB (over 2 x 3000 bytes)
        try:
            c.send_frame("SEND", {"destination": "/topic/r"}, "z" * 900)
        except Exception:
            break
    c.expect_error("rate limit exceeded: more than 3000 bytes per second")


def test_empty_websocket_frames_count_against_bytes_per_second(rate_gw, healthy_of):
    """Empty continuation frames carry no payload but cost work: each counts 64 bytes, so a
    flood of them meets the byte rate (a probe sent a million for 10 s of server CPU, no limit
    hit)."""
    healthy_of(rate_gw)
    ws = RawWebSocket(rate_gw.port)
    ws.stomp_connect()
    flood = build_frame(OP_TEXT, b"", fin=False) + b"".join(build_frame(OP_CONT, b"", fin=False) for _ in range(200))
    ws.send_bytes(flood)  # 201 frames: 12,864 bytes counted, over 2 x 3000
    frames, closed = ws.read_all_until_close(10)
    assert closed
    assert any(b"rate limit exceeded: more than 3000 bytes per second" in f for f in stomp_frames(frames)), frames
    ws.close()


def test_ping_flood_counts_against_bytes_per_second(rate_gw, healthy_of):
    """Pings are answered with a pong each (a write and a flush): they count against the byte
    rate like data frames, at least 64 bytes each, so a ping flood ends the session."""
    healthy_of(rate_gw)
    ws = RawWebSocket(rate_gw.port)
    ws.stomp_connect()
    ws.send_bytes(b"".join(build_frame(OP_PING, b"p") for _ in range(200)))  # 13,000 bytes counted
    frames, closed = ws.read_all_until_close(10)
    assert closed
    assert any(b"rate limit exceeded: more than 3000 bytes per second" in f for f in stomp_frames(frames)), frames
    ws.close()


# -- fan-out backlog --------------------------------------------------------------------------

def test_publishes_wait_for_the_fanout_backlog_and_keep_their_order(gw, clients):
    """server.max-fanout-backlog-bytes=1: any message queued for another event loop puts its
    backlog over the limit, so the publisher's next SENDs wait (admission) until it is
    delivered. Nothing is lost, duplicated or reordered, the RECEIPT comes, and the waits are
    counted."""
    g = gw("server.threads=2", "server.max-fanout-backlog-bytes=1")
    subs = [clients(g) for _ in range(8)]  # the connections alternate between the two loops
    for i, s in enumerate(subs):
        s.subscribe("/topic/backlog", id="1", receipt=f"s{i}")
    pub = clients(g)
    sent = send_bursts_until(pub, "/topic/backlog", lambda: g.metric("switchboard_publish_admission_waits_total") > 0)
    assert g.metric("switchboard_publish_admission_waits_total") > 0
    for s in subs:
        got = [int(f.text) for f in s.receive_many(sent, timeout=30)]
        assert got == list(range(sent))
    assert g.metric("switchboard_publish_admission_refusals_total") == 0


# -- sessions per user ------------------------------------------------------------------------

def test_max_sessions_per_user(gw, clients):
    g = gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "limits.max-sessions-per-user=2")
    healthy = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="bob")))
    healthy.subscribe("/topic/health", "h", receipt="h")
    before = g.session_errors("limit")
    tok = make_token(HMAC_SECRET, sub="alice")
    a1 = clients(g, headers=bearer(tok))
    clients(g, headers=bearer(tok))
    a3 = clients(g, connect=False)
    f = a3.connect(headers={**bearer(tok), "receipt": "c3"}, expect_connected=False)
    assert f.command == "ERROR" and f.get("message") == "too many sessions for user alice (limit 2)"
    assert f.get("receipt-id") == "c3"
    assert a3.wait_closed(5)
    assert g.session_errors("limit") >= before + 1
    clients(g, headers=bearer(make_token(HMAC_SECRET, sub="carol")))  # other users are not affected
    expect_healthy(healthy, g)
    # a closed session frees its place
    a1.disconnect()
    a1.close()
    deadline = time.monotonic() + 5
    while True:
        c = clients(g, connect=False)
        f = c.connect(headers=bearer(tok), expect_connected=False)
        if f.command == "CONNECTED":
            break
        assert time.monotonic() < deadline, f"place not freed: {f.headers}"
        time.sleep(0.2)  # poll interval
    # rejected sessions did not take a place either
    assert g.health()["sessions"] == 4  # bob, alice x2, carol


# -- connections ---------------------------------------------------------------------------

def test_max_connections_per_instance(gw, clients):
    g = gw("limits.max-connections=3")
    healthy = clients(g)
    healthy.subscribe("/topic/health", "h", receipt="h")
    clients(g), clients(g)
    status, _, _ = upgrade_request(g.port)
    assert status != 101
    with pytest.raises(Exception):
        StompClient(g.ws_url, timeout=3)
    expect_healthy(healthy, g)
    assert g.wait_health(lambda h: h["connections"] == 3)["connections"] == 3


def test_max_connections_answer_is_429_json(gw, clients):
    g = gw("limits.max-connections=1")
    clients(g)
    status, headers, body = upgrade_request(g.port)
    assert status == 429
    assert json.loads(body)["error"] == "too many connections on this instance (limit 1)"


def test_max_connections_per_ip(gw, clients):
    g = gw("limits.max-connections-per-ip=2")
    healthy = clients(g)
    healthy.subscribe("/topic/health", "h", receipt="h")
    second = clients(g)
    assert upgrade_request(g.port)[0] != 101
    # another address is not limited by 127.0.0.1's connections
    sock = socket.create_connection(("127.0.0.1", g.port), source_address=("127.0.0.2", 0))
    other = StompClient(g.ws_url, socket=sock)
    other.connect()
    other.close()
    expect_healthy(healthy, g)
    # closing one frees a place
    second.close()
    g.wait_health(lambda h: h["connections"] == 1)
    clients(g)


def test_max_connections_per_ip_answer_is_429_json(gw, clients):
    g = gw("limits.max-connections-per-ip=1")
    clients(g)
    status, headers, body = upgrade_request(g.port)
    assert status == 429
    assert json.loads(body)["error"] == "too many connections from 127.0.0.1 (limit 1)"


def test_max_connections_holds_under_concurrent_handshakes(gw):
    """Many simultaneous upgrades must not get past the limit together (several rounds)."""
    g = gw("limits.max-connections=3", "server.threads=4")
    worst = 0
    for _ in range(8):
        opened, lock = [], threading.Lock()
        start = threading.Barrier(24)

        def attempt():
            start.wait()
            try:
                c = StompClient(g.ws_url, timeout=5)
            except Exception:
                return
            try:
                c.connect()  # a live session, not an upgrade closed right after
            except Exception:
                c.close()
                return
            with lock:
                opened.append(c)

        threads = [threading.Thread(target=attempt) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        worst = max(worst, len(opened))
        for c in opened:
            c.close()
        if worst > 3:
            break
        g.wait_health(lambda h: h["connections"] == 0)
    assert worst <= 3, f"{worst} live sessions with limits.max-connections=3"


def _http_exchange(sock: socket.socket, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Sends `request` on `sock` and reads one answer (Content-Length framed): (status, body)."""
    sock.settimeout(timeout)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed inside the body"
        body += chunk
    return int(head.split(b" ")[1]), body


def test_max_http_connections_per_port(gw, clients):
    """Plain-HTTP connections past http.max-connections get a 503 JSON and are closed; the
    open ones keep working, WebSocket sessions are not counted, a closed one frees a place."""
    g = gw("http.max-connections=2")
    healthy = clients(g)
    healthy.subscribe("/topic/http-limit", "h", receipt="h")
    live = b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(2)]
    for s in held:
        assert _http_exchange(s, live)[0] == 200
    body = json.dumps({"topic": "/topic/http-limit", "message": "refused"}).encode()
    third = socket.create_connection(("127.0.0.1", g.port))
    status, answer = _http_exchange(third, b"POST /api/notification HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert status == 503
    assert json.loads(answer) == {"error": "too many HTTP connections on this port (http.max-connections 2); retry later", "field": None}
    third.settimeout(5)
    assert third.recv(100) == b"", "the refused connection is closed"
    third.close()
    healthy.expect_nothing(0.3)  # the refused publish published nothing
    # A health check still gets through a full port (a reserve of places): a flood of API
    # connections must not take a serving instance out of the load balancer.
    # Answered once and closed: a publish pipelined behind the check is not served.
    probe = socket.create_connection(("127.0.0.1", g.port))
    sneaked = (b"POST /api/notification HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert _http_exchange(probe, b"GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n" + sneaked)[0] == 200
    probe.settimeout(10)
    assert probe.recv(1) == b"", "a place of the reserve is not kept: closed after its answer"
    probe.close()
    healthy.expect_nothing(0.3)  # the publish behind the check was not served
    # A HEAD check too, its request line arriving in pieces (a method other than GET used to be
    # routed, and refused, before its path was read), one of them ending right after the path:
    # answered once and closed, the publish pipelined behind it not served.
    head_probe = socket.create_connection(("127.0.0.1", g.port))
    head_probe.settimeout(10)
    for piece in (b"HEA", b"D /heal", b"th/live ", b"HTTP/1.1\r\nHost: t\r\n\r\n" + sneaked):
        head_probe.sendall(piece)
        time.sleep(0.05)  # separate segments (not a wait for anything)
    answer = b""
    while chunk := head_probe.recv(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1, answer
    head_probe.close()
    healthy.expect_nothing(0.3)  # the publish behind the HEAD check was not served
    # A WebSocket session is not an HTTP connection.
    clients(g).subscribe("/topic/http-limit", "w", receipt="w")
    for s in held:
        assert _http_exchange(s, live)[0] == 200
    held[0].close()

    def place_free():
        try:
            return requests.get(g.base + "/health/live", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    wait_until(place_free, what="a place freed by the closed connection")
    held[1].close()  # so the checks below have places
    assert g.metric("switchboard_http_connections_refused_total", port="main") >= 1
    expect_healthy(healthy, g, topic="/topic/http-limit")
