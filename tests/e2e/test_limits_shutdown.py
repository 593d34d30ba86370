"""Connect timeout, slow consumers, and SIGTERM shutdown."""
import signal
import socket
import time

import pytest
import requests

from support.process import wait_until
from support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket, stomp_frames, upgrade_request
from support.stompclient import StompClient
from support.webhook import WebhookServer


@pytest.fixture(scope="module")
def limited(gateway_factory):
    return gateway_factory("stomp.connect-timeout-ms=500", "limits.max-pending-bytes=65536")


@pytest.fixture
def watcher(limited, client):
    c = client(limited)
    c.connect()
    c.subscribe("/topic/watch", id="w", receipt="w")
    return c


def assert_watcher_alive(gw, watcher, text):
    assert gw.publish("/topic/watch", text).status_code == 200
    assert watcher.expect_message(timeout=3).text == text


def test_connect_timeout(limited, client, watcher):
    c = client(limited)
    t0 = time.monotonic()
    c.expect_error("no CONNECT frame within 500 ms", timeout=5)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 3.0, elapsed
    assert_watcher_alive(limited, watcher, "after connect timeout")


def test_connect_in_time_is_fine(limited, client):
    c = client(limited)
    time.sleep(0.05)  # time passing is the test: under the 500 ms CONNECT deadline (with slack for a loaded machine)
    c.connect()
    time.sleep(0.6)  # time passing is the test: past the CONNECT deadline once connected
    c.subscribe("/topic/in-time", id="1", receipt="ok")


def test_stalled_http_upgrade_only_socket_does_not_hurt(limited, watcher):
    """A raw TCP connection that never finishes the HTTP request is not a STOMP session."""
    s = socket.create_connection(("127.0.0.1", limited.port))
    s.sendall(b"GET /stomp HTTP/1.1\r\nHost: x\r\n")
    try:
        assert_watcher_alive(limited, watcher, "with stalled socket")
    finally:
        s.close()


def test_slow_consumer_is_disconnected(limited, client, watcher):
    base = limited.wait_health(lambda j: True)["connections"]
    # A consumer with a tiny receive buffer that never reads.
    slow = client(limited, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    slow.connect()
    slow.subscribe("/topic/flood", id="f", receipt="r")
    assert limited.health()["connections"] == base + 1
    pub = client(limited)
    pub.connect()
    payload = "z" * 100_000
    deadline = time.monotonic() + 20
    sent = 0
    # Publish until the gateway drops the slow consumer (bounded in count and time).
    while sent < 200 and time.monotonic() < deadline:
        pub.send("/topic/flood", payload, receipt=f"p{sent}")
        sent += 1
        if sent % 10 == 0 and limited.health()["connections"] == base + 1:
            break
    h = limited.wait_health(lambda j: j["connections"] == base + 1, timeout=8)
    assert h["connections"] == base + 1, f"slow consumer still connected after {sent} x 100 KB: {h}"
    assert h["status"] == "ok"
    # The publisher and the watcher are unaffected.
    pub.send("/topic/watch", "pub still ok", receipt="ok")
    assert watcher.expect_message(timeout=3).text == "pub still ok"
    assert_watcher_alive(limited, watcher, "after slow consumer")
    # If the stalled client reads now, what it finds ends with the slow-consumer ERROR or a close.
    frames = []
    try:
        while True:
            frames.append(slow.receive(2))
    except Exception:
        pass
    errors = [f for f in frames if f.command == "ERROR"]
    if errors:
        assert errors[0]["message"] == "slow consumer: more than 65536 bytes pending delivery"


def test_fast_consumer_of_same_flood_is_not_disconnected(limited, client):
    fast = client(limited)
    fast.connect()
    fast.subscribe("/topic/flood2", id="f", receipt="r")
    pub = client(limited)
    pub.connect()
    for i in range(30):
        pub.send("/topic/flood2", "q" * 50_000, headers={"n": str(i)})
        assert fast.expect_message()["n"] == str(i)
    assert not fast.closed


def test_sigterm_sends_error_and_exits_zero(gateway_factory, client, stomppy):
    gw = gateway_factory()
    clients = []
    for version in ("1.0", "1.1", "1.2"):
        c = client(gw)
        c.connect(version=version)
        clients.append(c)
    c.subscribe("/topic/bye", id="b", receipt="r")
    conn, lst = stomppy(gw)
    pending = StompClient(gw.ws_url)  # not yet CONNECTed
    code = None
    try:
        t0 = time.monotonic()
        gw.proc.send_signal(15)
        for c in clients:
            err = c.expect_error("server shutting down, reconnect", timeout=5)
            assert err.command == "ERROR"
            # "Going away" (RFC 6455 §7.4.1): a client may take 1000 for a final end.
            assert c.close_code == 1001, c.close_code
        headers, _ = lst.wait_error(5)
        assert headers["message"] == "server shutting down, reconnect"
        code = gw.proc.wait(10)
        assert time.monotonic() - t0 < 10
    finally:
        pending.close()
    assert code == 0
    log = gw.log_path.read_text()
    assert "Fatal error" not in log


def test_a_second_signal_stops_at_once(gateway_factory, client):
    """A second SIGTERM (or SIGINT) during the drain stops now, as a second Ctrl-C does in most
    servers: no drain delay, no grace; sessions still get their ERROR; the exit is an error.
    It was ignored: the process waited out the whole drain."""
    for second in (signal.SIGTERM, signal.SIGINT):
        gw = gateway_factory("server.drain-delay-ms=60000", "server.shutdown-grace-ms=60000")
        c = client(gw)
        c.connect()
        c.subscribe("/topic/x", id="s", receipt="r")
        first = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(gw.base + "/health/ready", timeout=5).status_code == 503, 10, what="draining")
        c.expect_nothing(0.2)  # the drain delay: sessions stay
        # A signal within a second of the first counts as the same stop (the gateway times the
        # first when it handles it: a margin for a loaded machine).
        wait_until(lambda: time.monotonic() - first > 2.5, 5, 0.05, what="well past a second after the first signal")
        t0 = time.monotonic()
        gw.proc.send_signal(second)
        c.expect_error("server shutting down, reconnect", timeout=10)
        code = gw.proc.wait(15)
        assert time.monotonic() - t0 < 15
        assert code > 0, code  # an error exit, not the signal's default action
        log = gw.log_path.read_text()
        assert f"second {second.name} during the graceful shutdown: stopping now" in log, log[-2000:]
        assert "Fatal error" not in log


def test_a_second_signal_during_the_grace_ends_it(gateway_factory, client):
    """A second signal while the drain waits out its grace for a busy session (its SEND waiting
    for a slow webhook): the wait ends, the session gets its ERROR, and the process exits with
    an error. The wait went on, and the group's cancellation bound crashed the process."""
    hook = WebhookServer()
    hook.delay = 60  # answers long after the test
    try:
        gw, c = session_in_a_slow_step(gateway_factory, client, hook, "server.shutdown-grace-ms=60000")
        first = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down: closing sessions" in gw.log_path.read_text(), 10, what="the grace begun")
        # A signal within a second of the first counts as the same stop (the gateway times the
        # first when it handles it: a margin for a loaded machine).
        wait_until(lambda: time.monotonic() - first > 2.5, 5, 0.05, what="well past a second after the first signal")
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        c.expect_error("server shutting down, reconnect", timeout=10)
        code = gw.proc.wait(15)
        assert time.monotonic() - t0 < 15
        assert code > 0, code
        assert "Fatal error" not in gw.log_path.read_text()
    finally:
        hook.stop()


def test_sigterm_with_no_clients_exits_zero(gateway_factory):
    gw = gateway_factory()
    assert gw.stop(10) == 0


def slow_route(hook: WebhookServer, timeout_ms: int) -> str:
    """The YAML of a webhook route for /app/slow to `hook`."""
    return f"""
routes:
  names: [slow]
  slow:
    destination: /app/slow
    type: webhook
    url: {hook.url}
    timeout-ms: {timeout_ms}
"""


def session_in_a_slow_step(gateway_factory, client, hook: WebhookServer, *sets: str):
    """A gateway (no drain delay, `sets`) and a session whose receipted SEND waits for `hook`."""
    gw = gateway_factory(*sets, "server.drain-delay-ms=0", yaml=slow_route(hook, 60000))
    c = client(gw)
    c.connect()
    c.send_frame("SEND", {"destination": "/app/slow", "receipt": "s"}, "x")
    hook.wait_request()
    return gw, c


def test_sigterm_closes_a_session_whose_step_outlives_the_grace(gateway_factory, client):
    """A session waiting for a slow webhook at SIGTERM (its SEND's step in flight, longer than the
    grace): the drain closes it once the grace is over, with the ERROR and without the SEND's
    receipt (its outcome is unknown), and the gateway exits 0."""
    hook = WebhookServer()
    hook.delay = 60  # answers long after the test
    try:
        gw, c = session_in_a_slow_step(gateway_factory, client, hook, "server.shutdown-grace-ms=500")
        gw.proc.send_signal(signal.SIGTERM)
        # Not closed during the grace: the step may still finish and its receipt go out.
        c.expect_nothing(0.3)
        c.expect_error("server shutting down, reconnect", timeout=10)
        assert gw.proc.wait(15) == 0
        log = gw.log_path.read_text()
        assert "shutting down: sessions still busy after the grace; closing them" in log
        # The drain closed it: nothing was left for the listener's own deadline.
        assert "listener: closing a connection still open after the grace" not in log
        assert "connections=closed" in log
    finally:
        hook.stop()


def test_sigterm_closes_with_a_fin_after_the_receipt_it_waited_for(gateway_factory):
    """A session whose SEND waits for a slow webhook at SIGTERM, with more of the client's bytes
    unread behind it (reads pause while the step runs): the drain waits for the step, writes
    its RECEIPT, the ERROR and the close frame, then closes. Closing at once with bytes unread
    made the close a reset, which a proxy or a Windows stack passes on by dropping what it
    had not yet handed over: the RECEIPT the drain waited for. The connection now half-closes
    (a FIN) and reads the rest away."""
    hook = WebhookServer()
    hook.delay = 1.0
    try:
        gw = gateway_factory("server.shutdown-grace-ms=10000", "server.drain-delay-ms=0", yaml=slow_route(hook, 10000))
        ws = RawWebSocket(gw.port)
        ws.stomp_connect()
        ws.send_frame(OP_TEXT, b"SEND\ndestination:/app/slow\nreceipt:s\n\nx\x00")
        hook.wait_request()
        # More frames behind it: unread while the step runs.
        big = b"SEND\ndestination:/topic/more\n\n" + b"y" * 100_000 + b"\x00"
        for _ in range(3):
            assert ws.send_frame(OP_TEXT, big)
        gw.proc.send_signal(signal.SIGTERM)
        frames = []
        while not any(op == OP_CLOSE for op, _ in frames):
            _, op, payload = ws.recv_frame(timeout=10)
            frames.append((op, payload))
        commands = [f.split(b"\n", 1)[0] for f in stomp_frames(frames)]
        assert commands == [b"RECEIPT", b"ERROR"], commands
        ws.sock.settimeout(5)
        assert ws.sock.recv(1) == b""  # a FIN, not a reset
        ws.send_frame(OP_CLOSE, b"\x03\xe8")
        ws.close()
        assert gw.proc.wait(15) == 0
    finally:
        hook.stop()


def test_an_upgrade_under_way_at_sigterm_gets_its_503(gateway_factory):
    """A WebSocket upgrade half sent when SIGTERM comes: the drain used to close every connection
    still in its first request at once (a reset, no answer). It is answered 503 now, as an
    upgrade arriving during the drain is."""
    gw = gateway_factory("server.drain-delay-ms=10000")  # the rest of the head comes during it, however loaded the machine
    head = upgrade_request(gw.port)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(head[:20])
        # The listener has taken the connection before the signal (a request answered after it).
        assert requests.get(gw.base + "/health", timeout=5).status_code == 200
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(gw.base + "/health/ready", timeout=5).status_code == 503, 5, what="draining")
        s.sendall(head[20:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        s.close()
    assert gw.proc.wait(15) == 0


def test_a_refused_upgrade_is_answered_while_the_client_sends_on(gateway):
    """A refused WebSocket upgrade (here a wrong path) with more bytes behind it: the gateway
    closed at once with them unread, a reset, and a client still sending got a broken pipe
    instead of its 400. It reads and drops them now until the client closes (at most 2 s)."""
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    try:
        s.sendall(upgrade_request(gateway.port, path="/nowhere"))
        # More than the kernel buffers on both sides hold: the gateway must read it.
        s.sendall(b"x" * (24 << 20))
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        assert b'"field":"path"' in answer
    finally:
        s.close()


def test_refused_upgrades_lingering_count_as_pending_for_their_address(gateway_factory):
    """A refused upgrade lingers (up to 2 s) with its descriptor held: it stays counted among its
    address's connections in their first request, so refusals cannot hold more descriptors than
    `limits.max-pending-connections-per-ip`. Before, it left the count at once."""
    gw = gateway_factory("limits.max-pending-connections-per-ip=3")
    refused = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            refused.append(s)
            s.sendall(upgrade_request(gw.port, path="/nowhere"))
            assert s.recv(4096).startswith(b"HTTP/1.1 400"), "refused"
        # Their sockets stay open (lingering): a fourth from the address is closed at accept.
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        refused.append(s)
        try:
            s.sendall(upgrade_request(gw.port))
            assert s.recv(4096) == b"", "closed at accept, unanswered"
        except ConnectionResetError:
            pass
    finally:
        for s in refused:
            s.close()

    # Once they are closed, the address may connect again (the metrics come from it too).
    def refusals():
        try:
            return gw.metric("switchboard_pending_connections_refused_total")
        except requests.ConnectionError:
            return None
    wait_until(lambda: refusals() is not None, 10, what="the address admitted again")
    assert refusals() >= 1
