"""HTTP/1.1 keep-alive and pipelining on the API: publish requests are answered on the event
loop, other routes by the router; pipelined answers come back in request order either way."""
import json
import re
import socket
import threading

import pytest
import requests

from support.burst import subscribed_clients
from support.process import wait_until
from support.sockets import read_http_response


def request(method, path, body=None, headers=()):
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(data)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def read_responses(sock, count, timeout=10):
    """`count` responses (status, headers, JSON body) read off `sock`, in order."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < count:
        status, headers, body, buf = read_http_response(sock, buf)
        out.append((status, headers, body))
    return out


def subscribed(client, gateway, topic):
    return subscribed_clients(gateway, client, topic, 1)[0]


def test_pipelined_publish_and_router_requests_answer_in_order(gateway, client):
    c = subscribed(client, gateway, "/topic/pipe")
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/pipe", "message": "1"})
                  + request("GET", "/health")
                  + request("POST", "/api/notification", {"topic": "/topic/pipe", "message": "2"})
                  + request("POST", "/api/notification", {"topic": "/topic/pipe"})
                  + request("GET", "/health/live")
                  + request("POST", "/api/notifications", [{"topic": "/topic/pipe", "message": "3"}]))
        answers = read_responses(s, 6)
    assert [a[0] for a in answers] == [200, 200, 200, 400, 200, 200]
    assert answers[0][2]["topic"] == "/topic/pipe" and "id" in answers[0][2]
    assert answers[1][2]["status"] == "ok" and answers[1][2]["engine"] == "memory"
    assert "id" in answers[2][2]
    assert answers[3][2] == {"error": "missing field 'message'", "field": "message"}
    assert answers[4][2] == {"status": "live"}
    assert answers[5][2]["published"] == 1
    assert [m.text for m in c.receive_many(3)] == ["1", "2", "3"]


def test_many_pipelined_publishes_on_one_connection(gateway, client):
    c = subscribed(client, gateway, "/topic/pipe.many")
    n = 600  # more than the handler's 256 pending answers: reads pause and resume
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"".join(request("POST", "/api/notification", {"topic": "/topic/pipe.many", "message": str(i)})
                           for i in range(n)))
        answers = read_responses(s, n)
    assert all(a[0] == 200 for a in answers)
    assert len({a[2]["id"] for a in answers}) == n
    assert [m.text for m in c.receive_many(n)] == [str(i) for i in range(n)]


def test_connection_close_is_answered_then_closed(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}, ["Connection: close"]))
        (status, headers, body), = read_responses(s, 1)
        assert status == 200 and headers.get("connection") == "close"
        s.settimeout(5)
        assert s.recv(1) == b""


@pytest.mark.parametrize("first", ["", "publish"])
def test_an_http10_router_request_without_keep_alive_is_answered_then_closed(gateway, first):
    """HTTP/1.0 without `Connection: keep-alive` is the connection's last request on the router's
    routes too, as on the publish path (whether the router or a publish came first)."""
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        if first:
            s.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}))
            read_responses(s, 1)
        s.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
        (status, headers, body), = read_responses(s, 1)
        assert status == 200 and headers.get("connection") == "close"
        s.settimeout(5)
        assert s.recv(1) == b""


def test_api_requests_are_counted_in_metrics(gateway):
    def count():
        for line in requests.get(gateway.base + "/metrics", timeout=5).text.splitlines():
            if line.startswith("hb_requests{") and 'http_route="/api/notifications"' in line and 'status_code="207"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    before = count()
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("POST", "/api/notifications", [{"topic": "/topic/x", "message": "m"}, {"topic": "/nope"}]))
        assert read_responses(s, 1)[0][0] == 207
    wait_until(lambda: count() == before + 1, 5, what="the batch request counted")


@pytest.mark.parametrize("raw,route,method", [
    (request("GET", "/health/live"), "/health/live", "GET"),
    (request("GET", "/health/ready"), "/health/ready", "GET"),
    (request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}), "/api/notification", "POST"),
], ids=["live", "ready", "publish"])
def test_requests_answered_on_the_loop_are_counted_with_their_method(gateway, raw, route, method):
    # Every request answered by the fast path was labelled POST, health checks too.
    def methods():
        found = {}
        for line in requests.get(gateway.base + "/metrics", timeout=5).text.splitlines():
            if line.startswith("hb_requests{") and f'http_route="{route}"' in line:
                label = re.search(r'http_request_method="([^"]*)"', line).group(1)
                found[label] = found.get(label, 0) + float(line.rsplit(" ", 1)[1])
        return found
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(raw)
        assert read_responses(s, 1)[0][0] == 200
    wait_until(lambda: methods().get(method, 0) >= 1, 5, what=f"{route} counted")
    assert set(methods()) == {method}, methods()


def test_a_client_that_half_closes_gets_its_answers_then_the_close(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}) * 2)
        s.shutdown(socket.SHUT_WR)
        assert [a[0] for a in read_responses(s, 2)] == [200, 200]
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the gateway, not left half-open


def test_an_idle_publish_connection_is_closed_after_the_idle_timeout(gateway_factory):
    # A connection that only publishes never reaches Hummingbird's connection handler: the
    # publish handler keeps its idle timeout itself.
    gw = gateway_factory("http.idle-timeout-ms=300")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}))
        assert read_responses(s, 1)[0][0] == 200
        s.settimeout(15)
        assert s.recv(1) == b""  # closed by the gateway once idle


def test_a_client_that_reads_no_answers_is_closed_after_the_idle_timeout(gateway_factory):
    """Pipelined router requests (404s echoing a long path) and no reads: the answers fill the
    socket, the connection turns unwritable with answers owed, and the idle timeout never ran
    while one was owed: such a client held its connection (and its buffers) until shutdown.
    Unwritable for the idle timeout, it is closed now."""
    gw = gateway_factory("http.idle-timeout-ms=3000")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    path = "/nope-" + "x" * 8000
    count = 1000

    def send_all():
        try:
            s.sendall(request("GET", path) * count)
        except OSError:
            pass  # closed by the gateway while sending

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    try:
        # Two connections while the stalled one is open (it and this scrape's), one once closed.
        wait_until(lambda: gw.metric("switchboard_http_connections", port="main") >= 2, 20, what="the connection counted")
        wait_until(lambda: gw.metric("switchboard_http_connections", port="main") == 1, 20, what="the stalled connection closed")
        s.settimeout(10)
        answers = 0
        try:
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
                answers += buf.count(b"HTTP/1.1 404")
                buf = buf[-20:]
        except ConnectionResetError:
            pass
        assert answers < count
    finally:
        s.close()


def test_shutdown_closes_an_idle_publish_connection_without_waiting_for_the_grace(gateway_factory):
    gw = gateway_factory("server.shutdown-grace-ms=60000")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}))
        assert read_responses(s, 1)[0][0] == 200
        gw.proc.send_signal(15)
        s.settimeout(15)
        assert s.recv(1) == b""  # closed at once: nothing was owed on it
        assert gw.proc.wait(30) == 0  # well inside the 60 s grace


def test_shutdown_closes_a_connection_still_owing_an_answer_after_the_grace(gateway_factory):
    # A request whose body never comes is owed an answer forever: the shutdown waits for it
    # only `server.shutdown-grace-ms`, not the (here 10-minute) idle timeout.
    gw = gateway_factory("server.shutdown-grace-ms=1000", "http.idle-timeout-ms=600000")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(b"POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"topic\":")
        # Another connection's round trip: the gateway is serving, and has the first one's bytes.
        with socket.create_connection(("127.0.0.1", gw.port)) as other:
            other.sendall(request("POST", "/api/notification", {"topic": "/topic/x", "message": "m"}))
            assert read_responses(other, 1)[0][0] == 200
        gw.proc.send_signal(15)
        s.settimeout(60)
        assert s.recv(1) == b""  # closed by the gateway once the grace passed
        assert gw.proc.wait(60) == 0
    assert "switchboard stopped" in gw.log_path.read_text()


def test_malformed_http_is_a_json_400_after_the_answers_before_it(gateway, client):
    # NIO's own handler answered an empty 400 at once; the gateway's is JSON naming the part
    # at fault, written after the answers owed for the requests before it, then the close.
    c = subscribed(client, gateway, "/topic/pipe.bad")
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("POST", "/api/notification", {"topic": "/topic/pipe.bad", "message": "1"})
                  + b"POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
                  + request("POST", "/api/notification", {"topic": "/topic/pipe.bad", "message": "never"}))
        answers = read_responses(s, 2)
        s.settimeout(5)
        assert s.recv(1) == b""
    assert [a[0] for a in answers] == [200, 400]
    assert answers[1][1]["connection"] == "close" and answers[1][1]["content-type"] == "application/json"
    assert answers[1][2]["field"] == "Content-Length"
    assert answers[1][2]["error"].startswith("malformed HTTP request: ")
    assert [m.text for m in c.receive_many(1)] == ["1"]
    c.expect_nothing(0.3)


@pytest.mark.parametrize("first", [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                                   b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                                   b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["health", "metrics", "unknown-path"])
def test_malformed_http_after_a_router_request_waits_for_its_answer(gateway, first):
    # A request the router serves, then bad bytes: the 400 came first (before the router's
    # answer), then the router's answer, then a second, empty 400 from the router's task.
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(first + b"@@@ / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses[0] != 400 and statuses[1:] == [400], raw
    last = raw[raw.rindex(b"HTTP/1.1 400"):]
    assert b"connection: close" in last.lower() and b'"field":"method"' in last, last


def test_a_publish_route_with_another_method_is_405_and_an_unknown_path_404(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(request("GET", "/api/notification") + request("POST", "/api/notificatio", {"topic": "/topic/x"}))
        (status, headers, body), (status2, _, body2) = read_responses(s, 2)
    assert status == 405 and headers["allow"] == "POST"
    assert body == {"error": "method GET is not allowed on /api/notification; allowed: POST", "field": "method"}
    assert status2 == 404 and body2 == {"error": "no route for POST /api/notificatio", "field": "path"}


@pytest.mark.parametrize("raw,field", [
    (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
    (b"POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(150)) + b"\r\n", "headers"),
], ids=["method", "content-length", "too-many-headers"])
def test_a_malformed_first_request_is_answered_too(gateway, raw, field):
    # The first request of a connection is read before the HTTP handlers are chosen: its
    # parser error closed the connection with no answer at all.
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(raw)
        (status, headers, body), = read_responses(s, 1)
        s.settimeout(5)
        assert s.recv(1) == b""
    assert status == 400 and headers["connection"] == "close"
    assert body["error"].startswith("malformed HTTP request: ") and body["field"] == field, body


@pytest.mark.parametrize("first", [False, True], ids=["first-request", "after-a-request"])
def test_connect_is_405_and_closed(gateway, first):
    # A CONNECT asks for a tunnel. The router's 404 came without a body or its length (none is
    # allowed in the answer to a CONNECT), and the client waited for one until the idle
    # timeout (60 s).
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall((request("GET", "/health/live") if first else b"")
                  + b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        s.settimeout(10)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == ([200, 405] if first else [405]), raw
    assert b"connection: close" in raw[raw.rindex(b"HTTP/1.1 405"):].lower(), raw


def test_a_client_gone_in_the_middle_of_a_body_is_closed_at_once(gateway):
    # Nothing is owed for a request that will never be whole: the connection (and its
    # descriptor) used to stay until the idle timeout, 60 s.
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"topic\":")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    # The parser's complaint about the cut body may be answered (a 400) before the close.
    assert out == b"" or out.startswith(b"HTTP/1.1 400 "), out[:100]


@pytest.mark.parametrize("path", ["/api/notification", "/console/x"], ids=["publish", "router"])
@pytest.mark.parametrize("second", [False, True], ids=["first-request", "second-request"])
def test_a_body_trickled_a_byte_at_a_time_is_closed_at_the_request_timeout(gateway_factory, path, second):
    # Slowloris on a body: one byte every 0.3 s kept the connection (and its descriptor) for
    # ever, since each byte was activity for the idle timeout (60 s).
    g = gateway_factory("http.handshake-timeout-ms=1500")
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        if second:
            s.sendall(request("GET", "/health/live"))
            assert read_responses(s, 1)[0][0] == 200
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode())
        s.settimeout(0.3)
        closed_after = None
        for sent in range(60):  # 18 s at most
            try:
                s.sendall(b"x")
                if s.recv(4096) == b"":
                    closed_after = sent
                    break
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed_after = sent
                break
    # 1.5 s (plus one timer pass at most) of 18: closed long before the trickle ends.
    assert closed_after is not None and closed_after < 40, closed_after


def test_pipelined_publishes_wait_for_the_fanout_backlog_and_keep_their_order(gateway_factory, client):
    """server.max-fanout-backlog-bytes=1: a message queued for the other event loop puts its
    backlog over the limit, so the next pipelined publishes wait for admission. Every request
    is answered 200 in order, and every subscriber gets every message once, in order."""
    g = gateway_factory("server.threads=2", "server.max-fanout-backlog-bytes=1")
    subs = [subscribed(client, g, "/topic/admit") for _ in range(6)]  # on both loops
    sent = 0
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", g.port)) as s:
            s.sendall(b"".join(request("POST", "/api/notification", {"topic": "/topic/admit", "message": str(sent + i)})
                               for i in range(200))
                      + request("POST", "/api/notifications", [{"topic": "/topic/admit", "message": str(sent + 200 + i)}
                                                              for i in range(50)]))
            answers = read_responses(s, 201, timeout=30)
        assert [a[0] for a in answers] == [200] * 201, [a for a in answers if a[0] != 200][:3]
        sent += 250
        if g.metric("switchboard_publish_admission_waits_total") > 0:
            break
    assert g.metric("switchboard_publish_admission_waits_total") > 0
    for c in subs:
        got = [int(f.text) for f in c.receive_many(sent, timeout=30)]
        assert got == list(range(sent))


@pytest.mark.parametrize("via", ["fast-path", "router"])
def test_a_pipelined_request_over_the_body_limit_gets_its_413_before_the_close(gateway_factory, via):
    """The 413 comes as soon as the head announces too much, and the connection closes after it.
    The rest of that body (and what follows) is unread then: the connection lingers, reading and
    dropping it, so the close is no reset that could destroy the 413 before the client read it.
    The same for the router's 413 (a request with an `Origin` header is the router's)."""
    g = gateway_factory("http.max-body-bytes=4000")
    good = request("POST", "/api/notification", {"topic": "/topic/limit", "message": "m"})
    origin = b"Origin: http://localhost\r\n" if via == "router" else b""
    big = b"POST /api/notification HTTP/1.1\r\nHost: x\r\n" + origin + b"Content-Length: 60000\r\n\r\n" + b"z" * 60000
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", g.port)) as s:
            s.sendall(good + big + good)
            answers = read_responses(s, 2)
            assert [a[0] for a in answers] == [200, 413], answers
            assert answers[1][1].get("connection") == "close"
            s.settimeout(10)
            assert s.recv(65536) == b""  # then the connection closes
