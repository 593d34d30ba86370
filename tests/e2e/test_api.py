"""HTTP publish API: POST /api/notification."""
import subprocess

import pytest
import requests

from support.sockets import recv_until


def test_seed_test_1_curl_reaches_stomppy_subscriber(gateway, stomppy):
    """The seed's Test #1, verbatim: curl POST → stomp.py subscriber of /topic/toast."""
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/toast", id="toast", receipt="r")
    lst.wait_receipt("r")
    cmd = ["curl", "-s", "-X", "POST", "-d", '{"topic": "/topic/toast", "message": "testing API endpoint" }',
           "-H", "Content-Type: application/json", f"localhost:{gateway.port}/api/notification"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    (headers, body), = lst.wait_messages(1)
    assert body == "testing API endpoint"
    assert headers["content-type"] == "text/plain"
    assert headers["destination"] == "/topic/toast"
    assert headers["subscription"] == "toast"
    import json
    reply = json.loads(out.stdout)
    assert reply["topic"] == "/topic/toast"
    assert reply["id"] == headers["message-id"]


def test_success_json_and_delivery(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/api.ok", id="a", receipt="r")
    r = gateway.publish("/topic/api.ok", "hi there")
    assert r.status_code == 200
    j = r.json()
    assert j["topic"] == "/topic/api.ok" and j["id"]
    m = c.expect_message()
    assert m.text == "hi there"
    assert m["content-type"] == "text/plain"
    assert m["message-id"] == j["id"]
    assert m["content-length"] == str(len("hi there".encode()))


def test_custom_headers_and_content_type(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/api.hdr", id="a", receipt="r")
    r = gateway.publish("/topic/api.hdr", '{"k": 1}', headers={"x-source": "billing", "x-colon": "a:b"},
                        contentType="application/json")
    assert r.status_code == 200, r.text
    m = c.expect_message()
    assert m.text == '{"k": 1}'
    assert m["content-type"] == "application/json"
    assert m["x-source"] == "billing"
    assert m["x-colon"] == "a:b"


def test_unicode_message(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/api.utf8", id="a", receipt="r")
    text = "héllo wörld ✓ 日本"
    assert gateway.publish("/topic/api.utf8", text).status_code == 200
    m = c.expect_message()
    assert m.text == text
    assert m["content-length"] == str(len(text.encode("utf-8")))


def test_wildcard_subscriber_gets_api_message(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/alerts.**", id="w", receipt="r")
    assert gateway.publish("/topic/alerts.eu.fr", "bonjour").status_code == 200
    m = c.expect_message()
    assert m["destination"] == "/topic/alerts.eu.fr" and m.text == "bonjour"


def post_raw(gateway, data, content_type="application/json"):
    return requests.post(gateway.base + "/api/notification", data=data, headers={"Content-Type": content_type}, timeout=5)


@pytest.mark.parametrize("payload,field,error", [
    ({"message": "x"}, "topic", "missing field 'topic'"),
    ({"topic": "/topic/x"}, "message", None),
    ({"topic": "/queue/x", "message": "x"}, "topic", "field 'topic' must start with /topic/"),
    ({"topic": 5, "message": "x"}, "topic", None),
    ({"topic": "/topic/x", "message": 5}, "message", None),
    ({"topic": "/topic/x", "message": "x", "headers": "nope"}, "headers", None),
    ({"topic": "/topic/x", "message": "x", "headers": {"k": 1}}, "headers", None),
    ({"topic": "/topic/x", "message": "x", "contentType": 7}, "contentType", None),
])
def test_validation_errors_name_the_field(gateway, payload, field, error):
    r = requests.post(gateway.base + "/api/notification", json=payload, timeout=5)
    assert r.status_code == 400, r.text
    j = r.json()
    assert j["field"] == field, j
    assert j["error"]
    if error:
        assert j["error"] == error
    if field == "message" and "message" not in payload:
        assert j["error"] == "missing field 'message'"


@pytest.mark.parametrize("data", [b"not json", b"[1,2,3]", b'"just a string"', b""])
def test_non_object_body(gateway, data):
    r = post_raw(gateway, data)
    assert r.status_code == 400
    j = r.json()
    assert j["error"] == "request body must be a JSON object"
    assert j["field"] is None


def test_rejected_publish_is_not_delivered(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/**", id="all", receipt="r")
    assert requests.post(gateway.base + "/api/notification", json={"topic": "/topic/x"}, timeout=5).status_code == 400
    c.expect_nothing(0.3)


def test_wildcard_topic_in_api(gateway):
    r = gateway.publish("/topic/stock.*", "x")
    # Publishing to a wildcard pattern is not a concrete destination.
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "topic"


def test_many_api_publishes_in_order(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/api.order", id="o", receipt="r")
    with requests.Session() as s:
        for i in range(50):
            r = s.post(gateway.base + "/api/notification", json={"topic": "/topic/api.order", "message": str(i)}, timeout=5)
            assert r.status_code == 200
    assert [m.text for m in c.receive_many(50)] == [str(i) for i in range(50)]


def _raw_http(port: int, request: bytes) -> tuple[str, bool]:
    """Sends `request` on a new connection; returns the answer's head (lower-cased) and whether
    the server closed the connection after it."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = recv_until(s)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next((l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), b"0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        s.settimeout(2)
        try:
            closed = s.recv(1) == b""
        except socket.timeout:
            closed = False
        return head.decode().lower(), closed


@pytest.mark.parametrize("request_line", [
    "GET /health", "GET /no/such/route", "GET /health/ready", "POST /api/notification",
])
def test_connection_close_is_answered_with_connection_close(gateway, request_line):
    """RFC 9112 §9.6: a request with `Connection: close` gets `Connection: close` in its answer
    (router routes, their errors and the publish fast path alike), and the connection closes; a
    keep-alive request gets neither."""
    body = b'{"topic":"/topic/cc","message":"m"}' if request_line.startswith("POST") else b""
    extra = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) if body else b""
    head, closed = _raw_http(gateway.port, request_line.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n" + body)
    assert "\r\nconnection: close" in head, head
    assert closed
    head, closed = _raw_http(gateway.port, request_line.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n" + body)
    assert "connection: close" not in head, head
    assert not closed
