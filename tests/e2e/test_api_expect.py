"""`Expect: 100-continue` on the HTTP API (RFC 9110 §10.1.1): the gateway answers `100 Continue`
as soon as it has read the head, so a client waiting for it (curl for large bodies, 1 s) sends
its body at once; on the fast path (publishes) and through the router (here: a request with an
`Origin`, which the CORS middleware and the router's routes serve). Any other expectation is a
417 naming the field."""
import json
import socket
import subprocess
import time

import pytest

from support.burst import subscribed_clients
from support.sockets import read_http_response as read_response
from support.sockets import recv_until

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def head(path, body, *headers, method="POST"):
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def subscribed(client, gateway, topic):
    return subscribed_clients(gateway, client, topic, 1)[0]


def expect_continue_before_body(sock, request_head):
    """Sends only the head and waits (10 s at most) for the interim answer; returns what came
    after it in the same read (a request without a body may get its final answer at once)."""
    sock.settimeout(10)
    sock.sendall(request_head)
    got = recv_until(sock, b"\r\n\r\n")
    assert got.startswith(CONTINUE), got
    return got[len(CONTINUE):]


@pytest.mark.parametrize("via", ["fast-path", "router"])
def test_continue_comes_before_the_body_and_the_message_is_delivered(gateway, client, via):
    topic = f"/topic/expect.{via}"
    c = subscribed(client, gateway, topic)
    body = json.dumps({"topic": topic, "message": f"via {via}"}).encode()
    extra = ["Origin: http://localhost"] if via == "router" else []
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        assert expect_continue_before_body(s, head("/api/notification", body, "Expect: 100-continue", *extra)) == b""
        s.settimeout(10)
        s.sendall(body)
        status, headers, answer, rest = read_response(s)
        assert status == 200 and answer["topic"] == topic and rest == b""
        # The router's answers carry the CORS headers: this one came through it.
        assert ("access-control-allow-origin" in headers) == (via == "router")
        # The connection stays usable, for another request with its expectation too.
        second = json.dumps({"topic": topic, "message": "again"}).encode()
        assert expect_continue_before_body(s, head("/api/notification", second, "Expect: 100-Continue", *extra)) == b""
        s.settimeout(10)
        s.sendall(second)
        assert read_response(s)[0] == 200
    assert [m.text for m in c.receive_many(2)] == [f"via {via}", "again"]


def test_a_router_route_without_a_body_gets_its_continue_too(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        after = expect_continue_before_body(s, head("/health", b"", "Expect: 100-continue", method="GET"))
        status, _, answer, _ = read_response(s, after)
        assert status == 200 and answer["status"] == "ok"


def test_an_unknown_expectation_is_417_and_not_published(gateway, client):
    c = subscribed(client, gateway, "/topic/expect.417")
    body = json.dumps({"topic": "/topic/expect.417", "message": "no"}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.settimeout(10)
        s.sendall(head("/api/notification", body, "Expect: fancy") + body)
        status, headers, answer, _ = read_response(s)
        assert status == 417
        assert answer == {"error": "expectation 'fancy' cannot be met: only 100-continue is supported", "field": "Expect"}
        assert headers.get("connection") == "close"
        assert s.recv(65536) == b""  # then the connection closes
    # Nothing was published: the next message the subscriber gets is the one sent after.
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.settimeout(10)
        after = json.dumps({"topic": "/topic/expect.417", "message": "after"}).encode()
        s.sendall(head("/api/notification", after) + after)
        assert read_response(s)[0] == 200
    assert c.receive().text == "after"


@pytest.mark.parametrize("extra", [b"", b"Origin: http://app\r\n"], ids=["fast-path", "router"])
def test_an_oversized_body_gets_the_413_instead_of_continue(gateway_factory, extra):
    g = gateway_factory("http.max-body-bytes=4000")
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        s.settimeout(10)
        s.sendall(b"POST /api/notification HTTP/1.1\r\nHost: x\r\n" + extra + b"Expect: 100-continue\r\nContent-Length: 60000\r\n\r\n")
        status, headers, _, _ = read_response(s)
        assert status == 413 and headers.get("connection") == "close"


def test_curl_does_not_wait_for_its_expect_timeout(gateway, client):
    """The reproduction: curl waits `--expect100-timeout` (1 s by default) for the 100 before the body."""
    c = subscribed(client, gateway, "/topic/expect.curl")
    body = json.dumps({"topic": "/topic/expect.curl", "message": "curl"})
    started = time.monotonic()
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--expect100-timeout", "20", "-X", "POST",
         "-H", "Expect: 100-continue", "-H", "Content-Type: application/json", "--data", body,
         f"http://127.0.0.1:{gateway.port}/api/notification"],
        capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert out.returncode == 0 and out.stdout == "200", (out.stdout, out.stderr)
    assert elapsed < 10, f"curl took {elapsed:.1f} s: it waited for its expect timeout"
    assert c.receive().text == "curl"
