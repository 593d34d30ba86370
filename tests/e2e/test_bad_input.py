"""Every class of bad input gets its exact ERROR (then the connection closes), while an
already-connected session keeps receiving messages afterwards."""
import pytest

from support.stompclient import StompClient

CONNECT = b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00"


@pytest.fixture(scope="module")
def watcher(gateway):
    """One long-lived healthy subscriber for the whole module."""
    c = StompClient(gateway.ws_url)
    c.connect(heartbeat="0,0")
    c.subscribe("/topic/watch", id="w", receipt="w")
    yield c
    c.close()


@pytest.fixture(autouse=True)
def still_healthy(gateway, watcher, client):
    """After each case: the watcher still gets messages from the API and from STOMP."""
    yield
    assert gateway.publish("/topic/watch", "api-after").status_code == 200
    assert watcher.expect_message(timeout=3).text == "api-after"
    pub = client(gateway)
    pub.connect()
    pub.send("/topic/watch", "stomp-after", receipt="p")
    assert watcher.expect_message(timeout=3).text == "stomp-after"
    assert gateway.health()["status"] == "ok"


def raw_case(gateway, client, data: bytes, connect_first: bool, binary=False):
    c = client(gateway)
    if connect_first:
        c.connect()
    c.send_raw(data, binary=binary)
    return c


# (id, connect first?, raw bytes, exact ERROR message)
DECODE_CASES = [
    ("unknown-command", True, b"FOO\n\n\x00", "unknown command 'FOO'"),
    ("unknown-command-pre-connect", False, b"FOO\n\n\x00", "unknown command 'FOO'"),
    ("malformed-header", True, b"SEND\ndestination:/topic/x\nnocolon\n\n\x00", "malformed header line 'nocolon': expected name:value"),
    ("undefined-escape", True, b"SEND\ndestination:/topic/x\nh:a\\tb\n\n\x00", "undefined escape sequence '\\t' in header"),
    ("bad-content-length", True, b"SEND\ndestination:/topic/x\ncontent-length:abc\n\nhi\x00", "invalid content-length 'abc'"),
    ("negative-content-length", True, b"SEND\ndestination:/topic/x\ncontent-length:-1\n\nhi\x00", "invalid content-length '-1'"),
    ("missing-nul", True, b"SEND\ndestination:/topic/x\ncontent-length:2\n\nhiX\x00",
     "frame body is not followed by a NUL octet after content-length bytes"),
    ("too-many-headers", True, b"SEND\ndestination:/topic/x\n" + b"".join(b"h%d:v\n" % i for i in range(70)) + b"\n\x00",
     "too many headers (limit 64)"),
    ("header-too-long", True, b"SEND\ndestination:/topic/x\nh:" + b"v" * 9000 + b"\n\n\x00",
     "header line too long (limit 8192 bytes)"),
    # Just over the STOMP limit, still under the WebSocket layer's limit (max-frame-bytes + 1024).
    ("frame-too-large", True, b"SEND\ndestination:/topic/x\n\n" + b"x" * 263_000 + b"\x00", "frame too large (limit 262144 bytes)"),
    ("frame-too-large-content-length", True, b"SEND\ndestination:/topic/x\ncontent-length:263000\n\n" + b"x" * 263_000 + b"\x00",
     "frame too large (limit 262144 bytes)"),
]


@pytest.mark.parametrize("connect_first,data,message", [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES])
def test_decode_errors(gateway, client, connect_first, data, message):
    c = raw_case(gateway, client, data, connect_first)
    c.expect_error(message)


RECEIPTED_DECODE_CASES = [
    ("bad-content-length", b"SEND\ndestination:/topic/x\nreceipt:r1\ncontent-length:abc\n\nhi\x00", "invalid content-length 'abc'"),
    ("missing-nul", b"SEND\ndestination:/topic/x\nreceipt:r1\ncontent-length:2\n\nhiX\x00",
     "frame body is not followed by a NUL octet after content-length bytes"),
    ("undefined-escape", b"SEND\ndestination:/topic/x\nreceipt:r1\nh:a\\tb\n\n\x00", "undefined escape sequence '\\t' in header"),
    ("frame-too-large", b"SEND\ndestination:/topic/x\nreceipt:r1\n\n" + b"x" * 263_000 + b"\x00", "frame too large (limit 262144 bytes)"),
]


@pytest.mark.parametrize("data,message", [c[1:] for c in RECEIPTED_DECODE_CASES], ids=[c[0] for c in RECEIPTED_DECODE_CASES])
def test_decode_errors_name_the_frames_receipt(gateway, client, data, message):
    # STOMP 1.2: an ERROR about a frame that asked for a receipt SHOULD carry its receipt-id.
    c = raw_case(gateway, client, data, True)
    assert c.expect_error(message)["receipt-id"] == "r1"


@pytest.mark.parametrize("size", [270_000, 600_000])
def test_frame_too_large_in_one_big_websocket_message(gateway, client, size):
    c = client(gateway)
    c.connect()
    c.send_raw(b"SEND\ndestination:/topic/x\n\n" + b"x" * size + b"\x00")
    c.expect_error("frame too large (limit 262144 bytes)")


def test_frame_too_large_without_nul_streamed(gateway, client):
    """A frame that never ends is cut off once it passes the limit."""
    c = client(gateway)
    c.connect()
    c.send_raw(b"SEND\ndestination:/topic/x\n\n")
    for _ in range(6):
        c.send_raw(b"y" * 50_000)
    c.expect_error("frame too large (limit 262144 bytes)")


def test_decode_error_in_binary_ws_frame(gateway, client):
    c = raw_case(gateway, client, b"FOO\n\n\x00", True, binary=True)
    c.expect_error("unknown command 'FOO'")


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE", "DISCONNECT", "BEGIN", "ACK"])
def test_frames_before_connect(gateway, client, command):
    c = client(gateway)
    c.send_frame(command, {"destination": "/topic/x", "receipt": "pre"})
    err = c.expect_error(f"expected CONNECT or STOMP frame, got {command}")
    assert err["receipt-id"] == "pre"
    assert err["content-type"] == "text/plain"
    assert err.body.decode()


@pytest.mark.parametrize("command", ["MESSAGE", "RECEIPT", "ERROR", "CONNECTED"])
def test_server_frames_from_client(gateway, client, command):
    c = client(gateway)
    c.connect()
    c.send_frame(command, {"destination": "/topic/x", "receipt": "srv"})
    err = c.expect_error(f"{command} is a server frame and cannot be sent by a client")
    assert err["receipt-id"] == "srv"


def test_version_mismatch(gateway, client):
    c = client(gateway)
    err = c.connect(version="2.0", headers={"receipt": "v"}, expect_connected=False)
    assert err.command == "ERROR"
    assert err["message"] == "unsupported STOMP version: client accepts 2.0, server supports 1.0,1.1,1.2"
    assert err["version"] == "1.0,1.1,1.2"
    assert err["receipt-id"] == "v"
    assert c.wait_closed(3)


def test_stomppy_version_mismatch_sees_error(gateway, stomppy):
    import stomp
    conn, lst = stomppy(gateway, connect=False)
    conn.version = "2.0"  # stomp.py sends accept-version from this attribute
    try:
        conn.connect(wait=False)
    except stomp.exception.StompException:
        pass
    headers, _ = lst.wait_error(5)
    assert headers["message"].startswith("unsupported STOMP version: client accepts 2.0")


def test_already_connected(gateway, client):
    c = client(gateway)
    c.connect()
    c.send_raw(CONNECT)
    c.expect_error("already connected")


# Command-level errors after CONNECT: (id, version, command, headers, exact message)
COMMAND_CASES = [
    ("sub-no-destination", "1.2", "SUBSCRIBE", {"id": "1"}, "SUBSCRIBE requires a destination header"),
    ("sub-no-id-1.2", "1.2", "SUBSCRIBE", {"destination": "/topic/x"}, "SUBSCRIBE requires an id header in STOMP 1.2"),
    ("sub-no-id-1.1", "1.1", "SUBSCRIBE", {"destination": "/topic/x"}, "SUBSCRIBE requires an id header in STOMP 1.1"),
    ("sub-bad-ack", "1.2", "SUBSCRIBE", {"destination": "/topic/x", "id": "1", "ack": "foo"}, "invalid ack mode 'foo' for STOMP 1.2"),
    ("sub-ack-individual-1.0", "1.0", "SUBSCRIBE", {"destination": "/topic/x", "ack": "client-individual"},
     "invalid ack mode 'client-individual' for STOMP 1.0"),
    ("sub-app", "1.2", "SUBSCRIBE", {"destination": "/app/x", "id": "1"}, "cannot SUBSCRIBE to application destination /app/x"),
    ("sub-queue", "1.2", "SUBSCRIBE", {"destination": "/queue/x", "id": "1"}, "destination /queue/x is not allowed: SUBSCRIBE to /topic/"),
    ("send-queue", "1.2", "SEND", {"destination": "/queue/x"}, "destination /queue/x is not allowed: SEND to /topic/, /app/"),
    ("send-wildcard", "1.2", "SEND", {"destination": "/topic/*"}, "cannot SEND to wildcard destination /topic/*"),
    ("send-wildcard-deep", "1.2", "SEND", {"destination": "/topic/a.**"}, "cannot SEND to wildcard destination /topic/a.**"),
    ("send-no-route", "1.2", "SEND", {"destination": "/app/other"}, "no route for application destination /app/other"),
    ("nack-1.0", "1.0", "NACK", {"message-id": "m"}, "NACK is not supported in STOMP 1.0"),
    ("ack-no-id-1.2", "1.2", "ACK", {"message-id": "m", "subscription": "s"}, "ACK requires an id header in STOMP 1.2"),
    ("ack-missing-1.1", "1.1", "ACK", {"id": "x"}, "ACK requires message-id and subscription headers in STOMP 1.1"),
    ("begin-no-tx", "1.2", "BEGIN", {}, "BEGIN requires a transaction header"),
    ("commit-unknown", "1.2", "COMMIT", {"transaction": "t9"}, "unknown transaction 't9'"),
]


@pytest.mark.parametrize("version,command,headers,message", [c[1:] for c in COMMAND_CASES], ids=[c[0] for c in COMMAND_CASES])
def test_command_errors(gateway, client, version, command, headers, message):
    c = client(gateway)
    c.connect(version=version)
    c.send_frame(command, {**headers, "receipt": "bad"})
    err = c.expect_error(message)
    assert err["receipt-id"] == "bad"


def test_duplicate_subscription_id(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/a", id="1", receipt="ok")
    c.subscribe("/topic/b", id="1")
    c.expect_error("subscription id '1' is already in use")


def test_too_many_subscriptions(gateway, client):
    c = client(gateway)
    c.connect()
    batch = b"".join(
        b"SUBSCRIBE\ndestination:/topic/many.%d\nid:%d\n\n\x00" % (i, i) for i in range(257))
    c.send_raw(batch)
    c.expect_error("too many subscriptions (limit 256)")
    gateway.wait_health(lambda j: j["subscriptions"] < 100)
    assert gateway.health()["subscriptions"] < 100  # all 256 were released


def test_error_closes_only_that_session(gateway, client):
    a = client(gateway)
    a.connect()
    a.subscribe("/topic/iso", id="i", receipt="r")
    b = client(gateway)
    b.connect()
    b.send_raw(b"FOO\n\n\x00")
    b.expect_error("unknown command 'FOO'")
    gateway.publish("/topic/iso", "a lives")
    assert a.expect_message().text == "a lives"


def test_error_frame_after_valid_frames_in_same_ws_message(gateway, client):
    watcher2 = client(gateway)
    watcher2.connect()
    watcher2.subscribe("/topic/mixed", id="m", receipt="r")
    c = client(gateway)
    c.connect()
    c.send_raw(b"SEND\ndestination:/topic/mixed\nreceipt:ok\n\nfirst\x00FOO\n\n\x00SEND\ndestination:/topic/mixed\n\nnever\x00")
    c.expect_receipt("ok")
    c.expect_error("unknown command 'FOO'")
    assert watcher2.expect_message().text == "first"
    watcher2.expect_nothing(0.3)
