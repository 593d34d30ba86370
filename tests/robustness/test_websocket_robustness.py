"""Hostile WebSocket / HTTP / STOMP input over real sockets.

One gateway runs for the whole module (``limits.max-frame-bytes=16384``, so the WebSocket
layer's own frame cap is 17408 bytes) and a healthy STOMP session (``watcher``) stays
subscribed to ``/topic/robust`` throughout. After every test the autouse ``survives``
fixture (tests/robustness/conftest.py) asserts that the process is alive, ``/health`` answers and the watcher
still receives a message published with ``POST /api/notification``.

Every test states the server's expected reaction (RFC 6455 / RFC 9110 where they apply).
A newly found gap gets a test of the ideal marked ``xfail(strict=True, reason="BUG: ...")``
until it is fixed.
"""
from __future__ import annotations

import signal
import socket
import struct
import time

import pytest

from support.gateway import Gateway
from support.robustness import MAX_FRAME_BYTES, WS_MAX_FRAME_BYTES, assert_survived, expect_protocol_close
from support.rawws import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, build_frame, close_code,
                           stomp_frames, upgrade_request)

SEND_WITH_RECEIPT = b"SEND\ndestination:/topic/scratch\nreceipt:r\n\nhi\x00"
TOO_LARGE = f"frame too large (limit {MAX_FRAME_BYTES} bytes)".encode()


def tcp(gateway, sockets, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)
    sockets.append(s)
    return s


def read_http(s: socket.socket, timeout: float, until: bytes | None = None) -> tuple[bytes, str]:
    """Reads what the server sends within `timeout` (or until `until` was received):
    (bytes, 'eof' | 'reset' | 'open')."""
    s.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return out, "open"
        except ConnectionResetError:
            return out, "reset"
        if not chunk:
            return out, "eof"
        out += chunk
        if until is not None and until in out:
            return out, "open"
        s.settimeout(max(deadline - time.monotonic(), 0.01))
    return out, "open"


def expect_receipt_and_open(w: RawWebSocket, receipt: bytes = b"r"):
    frames, closed = w.read_all_until_close(1.0)
    assert any(f.startswith(b"RECEIPT\nreceipt-id:" + receipt) for f in stomp_frames(frames)), frames
    assert not closed and close_code(frames) is None, f"connection closed: {frames!r}"


# -- malformed WebSocket frames -------------------------------------------------------------

@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcode_closes_1002(ws, opcode):
    """A reserved opcode: close frame 1002 with reason 'unknown opcode', then TCP close
    (no STOMP ERROR frame)."""
    w = ws()
    w.send_frame(opcode, b"x")
    expect_protocol_close(w, 1002, reason=b"unknown opcode")


def test_fragmented_ping_closes_1002(ws):
    """A ping with FIN=0 (control frames must not be fragmented): like every WebSocket
    protocol error, close 1002 with a plain reason ('fragmented control frame') and no STOMP
    ERROR."""
    w = ws()
    w.send_frame(OP_PING, b"x", fin=False)
    expect_protocol_close(w, 1002, reason=b"fragmented control frame", no_stomp=True)


def test_ping_over_125_bytes_closes_1002(ws):
    """A 126-byte ping (control payloads are at most 125 bytes): close 1002 'control frame
    longer than 125 bytes', no STOMP ERROR, no internal (SwiftNIO) name anywhere."""
    w = ws()
    w.send_frame(OP_PING, b"p" * 126)
    expect_protocol_close(w, 1002, reason=b"control frame longer than 125 bytes", no_stomp=True)


def test_ping_of_125_bytes_gets_pong(ws):
    """The largest legal ping is answered with a pong carrying the same payload; the session
    stays usable."""
    w = ws()
    payload = bytes(range(125))
    w.send_frame(OP_PING, payload)
    fin, op, data = w.recv_frame()
    assert (fin, op, data) == (True, OP_PONG, payload)
    w.send_frame(OP_TEXT, SEND_WITH_RECEIPT)
    expect_receipt_and_open(w)


@pytest.mark.parametrize("form", ["16", "64"])
def test_non_minimal_length_encoding_is_accepted(ws, form):
    """A short payload announced with a 16- or 64-bit length: SwiftNIO's decoder accepts
    non-minimal encodings, so the frame is processed normally (RECEIPT) and the session
    stays open."""
    w = ws()
    w.send_frame(OP_TEXT, SEND_WITH_RECEIPT, length_form=form)
    expect_receipt_and_open(w)


def test_length_longer_than_data_then_silence(ws, gateway, watcher):
    """A header announcing 100 bytes followed by 3 bytes and silence: the server waits for
    the rest (no answer, connection open) without blocking anyone else (checked while the
    frame is pending)."""
    w = ws()
    w.send_frame(OP_TEXT, b"abc", length=100)
    frames, closed = w.read_all_until_close(1.0)
    assert frames == [] and not closed
    assert_survived(gateway, watcher)




RFC_FAIL_CASES = {
    "rsv1-set": lambda w: w.send_frame(OP_TEXT, SEND_WITH_RECEIPT, rsv=0b100),
    "continuation-without-start": lambda w: w.send_frame(OP_CONT, SEND_WITH_RECEIPT),
    "new-text-inside-fragmented-message": lambda w: (w.send_frame(OP_TEXT, b"SEND\n", fin=False),
                                                     w.send_frame(OP_TEXT, b"destination:/topic/scratch\n\nx\x00")),
    "unmasked-ping": lambda w: w.send_frame(OP_PING, b"hi", mask=False),
    "unmasked-close": lambda w: w.send_frame(OP_CLOSE, struct.pack("!H", 1000), mask=False),
}


@pytest.mark.parametrize("case", list(RFC_FAIL_CASES), ids=list(RFC_FAIL_CASES))
def test_rfc6455_violations_close_1002(ws, case):
    """Ideal (RFC 6455 §5.1, §5.2, §5.4): close 1002 and drop the TCP connection."""
    w = ws()
    RFC_FAIL_CASES[case](w)
    expect_protocol_close(w, 1002, timeout=1.5)


# -- invalid UTF-8 ----------------------------------------------------------------------------

def test_invalid_utf8_in_binary_frame_is_carried_as_bytes(ws):
    """STOMP payloads are a byte stream, so a binary frame holding invalid UTF-8 is processed
    (RECEIPT), the connection stays open and subscribers get the body byte for byte in a
    binary frame. (In a text frame it is a 1007, see test_websocket_conformance.py.)"""
    w = ws()
    body = b"\xff\xfe\xc0\xaf\xed\xa0\x80"
    w.send_frame(OP_BINARY, b"SUBSCRIBE\ndestination:/topic/bin\nid:1\n\n\x00"
                            b"SEND\ndestination:/topic/bin\nreceipt:r\n\n" + body + b"\x00")
    frames, closed = w.read_all_until_close(1.5)
    assert not closed and close_code(frames) is None
    msgs = [(op, p) for op, p in frames if p.startswith(b"MESSAGE\n")]
    assert len(msgs) == 1 and msgs[0][0] == OP_BINARY, frames
    assert msgs[0][1].endswith(b"\n\n" + body + b"\x00")
    assert any(f.startswith(b"RECEIPT\nreceipt-id:r") for f in stomp_frames(frames))


def test_invalid_utf8_in_header_is_an_error(ws):
    """Invalid UTF-8 in a header value (of a binary message, where the WebSocket layer checks
    nothing) is a STOMP ERROR, then the close: STOMP headers are UTF-8. (It was decoded with
    replacement characters: '/topic/\\xff' and '/topic/\\xfe' became one destination.)"""
    w = ws()
    w.send_frame(OP_BINARY, b"SEND\ndestination:/topic/\xff\nx-h:\xc3\x28\nreceipt:r\n\nx\x00")
    expect_protocol_close(w, 1000, stomp_error=b"header is not valid UTF-8")


# -- oversized frames -----------------------------------------------------------------------

@pytest.mark.parametrize("length", [2**63, 2**64 - 1], ids=["2^63", "2^64-1"])
def test_length_of_2_pow_63_is_refused_1009(ws, length):
    """A header claiming 2^63 (or 2^64-1) bytes is refused from the header alone: STOMP ERROR
    'frame too large (limit 16384 bytes)', close 1009. Nothing is allocated."""
    w = ws()
    w.send_frame(OP_TEXT, b"x" * 16, length=length, length_form="64")
    expect_protocol_close(w, 1009, stomp_error=TOO_LARGE)


def test_websocket_frame_over_limit_is_refused_1009(ws):
    """A real WebSocket frame over the WebSocket cap (max-frame-bytes + 1024): STOMP ERROR
    'frame too large (limit 16384 bytes)', close 1009."""
    w = ws()
    w.send_frame(OP_TEXT, b"SEND\ndestination:/topic/scratch\n\n" + b"x" * (WS_MAX_FRAME_BYTES + 100) + b"\x00")
    expect_protocol_close(w, 1009, stomp_error=TOO_LARGE)


def test_stomp_frame_over_limit_gets_error(ws):
    """A STOMP frame over max-frame-bytes inside a WebSocket frame under the WebSocket cap:
    STOMP ERROR 'frame too large (limit 16384 bytes)' and the connection is closed."""
    w = ws()
    w.send_frame(OP_TEXT, b"SEND\ndestination:/topic/scratch\n\n" + b"x" * (MAX_FRAME_BYTES + 500) + b"\x00")
    frames, closed = w.read_all_until_close(5)
    assert closed and close_code(frames) is not None
    assert any(f.startswith(b"ERROR\n") and TOO_LARGE in f for f in stomp_frames(frames)), frames


def test_stomp_frame_over_limit_closes_1009(ws):
    """Ideal: the same close code (1009 message too big) whichever layer noticed the size."""
    w = ws()
    w.send_frame(OP_TEXT, b"SEND\ndestination:/topic/scratch\n\n" + b"x" * (MAX_FRAME_BYTES + 500) + b"\x00")
    expect_protocol_close(w, 1009, stomp_error=TOO_LARGE)


# -- close frames ---------------------------------------------------------------------------

BAD_CLOSE = {
    "code-0": struct.pack("!H", 0),
    "code-999": struct.pack("!H", 999),
    "code-1005": struct.pack("!H", 1005),
    "code-1006": struct.pack("!H", 1006),
    "code-5000": struct.pack("!H", 5000),
    "1-byte-payload": b"\x03",
}


@pytest.mark.parametrize("payload", list(BAD_CLOSE.values()), ids=list(BAD_CLOSE))
def test_bad_close_frame_ends_connection(ws, payload):
    """A close frame with an illegal code or a 1-byte payload ends the connection (close
    1002, see the next test). The session ends; nothing else is affected."""
    w = ws()
    w.send_frame(OP_CLOSE, payload + b"bye" if len(payload) == 2 else payload)
    frames, closed = w.read_all_until_close(5)
    assert closed
    assert [op for op, _ in frames] == [OP_CLOSE]


@pytest.mark.parametrize("payload", list(BAD_CLOSE.values()), ids=list(BAD_CLOSE))
def test_bad_close_frame_answered_1002(ws, payload):
    """Ideal (RFC 6455 §5.5.1, §7.4): an illegal close code or a 1-byte close payload is a
    protocol error, answered with close 1002; 1005/1006 must never appear on the wire."""
    w = ws()
    w.send_frame(OP_CLOSE, payload)
    expect_protocol_close(w, 1002, timeout=2)


# -- unmasked client frames -----------------------------------------------------------------

@pytest.mark.parametrize("connect", [True, False], ids=["after-connect", "before-connect"])
def test_unmasked_data_frame_closes_1002(ws, connect):
    """An unmasked client data frame: close 1002 'client frames must be masked', TCP close."""
    w = ws(connect=connect)
    w.send_frame(OP_TEXT, SEND_WITH_RECEIPT, mask=False)
    expect_protocol_close(w, 1002, reason=b"client frames must be masked")


# -- handshake abuse ------------------------------------------------------------------------

def test_half_open_handshake_and_silent_connections(gateway, watcher, sockets):
    """Half an upgrade request then silence, and a TCP connection that sends nothing: the
    server has no handshake timeout, so both are simply held open (no answer within 2 s)
    while everyone else is served normally. Sending the rest of the request later still
    completes the upgrade (101)."""
    req = upgrade_request(gateway.port)
    half = tcp(gateway, sockets)
    half.sendall(req[: len(req) // 2])
    silent = [tcp(gateway, sockets) for _ in range(5)]
    assert_survived(gateway, watcher)
    out, state = read_http(half, 1.0)
    assert (out, state) == (b"", "open")
    for s in silent:
        assert read_http(s, 0.2) == (b"", "open")
    half.sendall(req[len(req) // 2:])
    out, _ = read_http(half, 2.0, until=b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 101"), out


def test_slowloris_headers(gateway, watcher, sockets):
    """Six sockets dribble an upgrade request one byte per 200 ms: the server waits for them
    without a timeout and keeps serving the healthy session, /health and the API meanwhile
    (checked mid-dribble). The rest of each request then upgrades normally."""
    socks = [tcp(gateway, sockets) for _ in range(6)]
    reqs = [upgrade_request(gateway.port) for _ in socks]
    for i in range(12):
        for s, r in zip(socks, reqs):
            s.sendall(r[i:i + 1])
        if i == 6:
            assert_survived(gateway, watcher)
        time.sleep(0.2)  # the dribble is the test: one byte per 200 ms
    for s, r in zip(socks, reqs):
        s.sendall(r[12:])
    for s in socks:
        out, _ = read_http(s, 2.0, until=b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 101"), out


def test_garbage_instead_of_http(gateway, sockets):
    """Binary garbage instead of an HTTP request: answered 400 and closed; the process and everyone
    else are unaffected."""
    s = tcp(gateway, sockets)
    s.sendall(bytes(range(256)) * 8)
    out, state = read_http(s, 1.0)
    assert state in ("open", "eof", "reset")


HTTP_ERRORS = {
    "binary-garbage": bytes(range(256)) * 8,
    "text-garbage": b"HELLO THERE\r\n\r\n",
    "huge-header-100k": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "200-headers": b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
}


@pytest.mark.parametrize("data", list(HTTP_ERRORS.values()), ids=list(HTTP_ERRORS))
def test_bad_http_request_survives(gateway, sockets, data):
    """Garbage or an oversized header block (limits: 16 KiB per field, 64 KiB total,
    100 fields): the process and every other client are unaffected."""
    s = tcp(gateway, sockets)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    read_http(s, 0.5)


@pytest.mark.parametrize("data", list(HTTP_ERRORS.values()), ids=list(HTTP_ERRORS))
def test_bad_http_request_is_answered_and_closed(gateway, sockets, data):
    """Ideal: a 400 (or 431 for headers over the limit) and the connection closed, within 2 s."""
    s = tcp(gateway, sockets)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    out, state = read_http(s, 2.0)
    assert state in ("eof", "reset"), f"connection still open after 2 s; got {out[:100]!r}"
    assert out == b"" or out.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), out[:200]


# -- connection lifecycle -------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["stomp", "websocket", "frame-too-large"])
def test_a_close_while_the_client_still_sends_is_no_reset(ws, fault):
    """A session ended by the server (an ERROR, or a WebSocket protocol error) while the
    client's next frames are unread: the socket was closed at once, so the close was a TCP
    reset, and a stack that drops what it received on a reset (Windows, a proxy passing the
    reset on) lost the ERROR and the close frame. Ideal (RFC 6455 §7.1.1): the server closes
    its side first (a FIN after its close frame) and reads on until the client's close frame
    or EOF, so the client reads everything, then EOF; its close frame ends the connection."""
    # (A frame over the WebSocket limit: NIO's frame decoder fails at its header and stays
    # failed, so the rest of the frame is what the client still sends.)
    w = ws()
    bad = b"BOGUS\n\n\x00" if fault == "stomp" else None
    if fault == "frame-too-large":
        first = build_frame(OP_TEXT, b"SEND\ndestination:/topic/scratch\n\n" + b"x" * 300_000 + b"\x00")
    else:
        first = build_frame(OP_TEXT, bad) if bad else build_frame(OP_TEXT, b"SEND", mask=False)
    # More than the kernel's buffers hold: the server must read on for the client to finish.
    size = 10_000 if fault == "frame-too-large" else 1000
    more = b"".join(build_frame(OP_TEXT, b"SEND\ndestination:/topic/scratch\n\n" + b"x" * size + b"\x00") for _ in range(300))
    w.send_bytes(first + more)
    out, how = read_http(w.sock, 5.0)
    assert how == "eof", (how, out[:200])
    assert b"\x88" in out, "the close frame arrived"
    if bad:
        assert b"ERROR\n" in out and b"BOGUS" in out, out[:300]
    if fault == "frame-too-large":
        assert b"ERROR\n" in out and TOO_LARGE in out, out[:300]
    # The client's close frame (the server's side is closed already): the connection ends.
    w.send_frame(OP_CLOSE, struct.pack("!H", 1000))
    w.sock.settimeout(5)
    assert w.sock.recv(1) == b""


def test_session_dropped_when_client_half_closes(gateway, ws):
    """Ideal: the peer's FIN ends the session (its subscriptions go too) within 3 s."""
    before = gateway.health()["sessions"]
    w = ws()
    w.send_frame(OP_TEXT, b"SUBSCRIBE\ndestination:/topic/fin\nid:1\n\n\x00")
    gateway.wait_health(lambda h: h["sessions"] == before + 1, 3)
    w.sock.shutdown(socket.SHUT_WR)
    gateway.wait_health(lambda h: h["sessions"] <= before, 3)
    assert gateway.health()["sessions"] == before


def test_shutdown_not_blocked_by_idle_connections():
    """Ideal: SIGTERM exits (code 0) within 6 s even with a silent TCP connection, a
    half-sent upgrade request and a garbage request open. Uses its own gateway."""
    gw = Gateway(name="robustness-shutdown")
    held = []
    try:
        held.append(socket.create_connection(("127.0.0.1", gw.port)))
        half = socket.create_connection(("127.0.0.1", gw.port))
        req = upgrade_request(gw.port)
        half.sendall(req[: len(req) // 2])
        held.append(half)
        junk = socket.create_connection(("127.0.0.1", gw.port))
        junk.sendall(b"HELLO THERE\r\n\r\n")
        held.append(junk)
        time.sleep(0.3)  # no observable: raw sockets that are not sessions yet; let the server accept and read them
        gw.proc.send_signal(signal.SIGTERM)
        try:
            code = gw.proc.wait(timeout=6)
        except Exception:
            code = None
        assert code == 0, "switchboard still running 6 s after SIGTERM"
    finally:
        for s in held:
            s.close()
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()
        gw.log.close()


# -- STOMP frames split across WebSocket messages -----------------------------------------

HEADER_LINE_LIMIT = 8192  # limits.max-header-line-bytes default
LONG_LINE_FRAME = (b"SEND\r\ndestination:/topic/scratch\r\nreceipt:r\r\n"
                   + b"h:" + b"v" * (HEADER_LINE_LIMIT - 2) + b"\r\n\r\nbody\x00")


def test_header_line_at_limit_with_crlf_in_one_message(ws):
    """A header line of exactly max-header-line-bytes (8192) bytes, CRLF-terminated, in one
    WebSocket message: accepted (the limit excludes the line ending) - RECEIPT."""
    w = ws()
    w.send_frame(OP_TEXT, LONG_LINE_FRAME)
    expect_receipt_and_open(w)


def test_header_line_at_limit_split_between_cr_and_lf(ws):
    """The same frame split into two WebSocket messages between the CR and the LF of the
    long line must be accepted too (frames may be split anywhere). Found by FuzzSTOMPDecoder."""
    w = ws()
    cut = LONG_LINE_FRAME.index(b"v\r\n\r\n") + 2
    w.send_frame(OP_TEXT, LONG_LINE_FRAME[:cut])
    time.sleep(0.1)  # the split is the test: two separate reads on the server
    w.send_frame(OP_TEXT, LONG_LINE_FRAME[cut:])
    expect_receipt_and_open(w)


# -- STOMP flood ----------------------------------------------------------------------------

def test_flood_of_2000_tiny_frames_in_one_message(ws):
    """2,000 tiny SEND frames (plus heart-beat EOLs) in ONE WebSocket message, to a
    destination the same session subscribes to. The message (~70 KB) is over the 17 KB
    WebSocket frame cap, so it goes as one fragmented message (text frame + continuations of
    8 KB; STOMP frames straddle the fragment boundaries). Expected: every frame is processed
    in order (2,000 MESSAGEs carrying 0..1999; the RECEIPT of the last frame comes right
    before the MESSAGE that frame caused) and the session stays open."""
    w = ws()
    w.send_frame(OP_TEXT, b"SUBSCRIBE\ndestination:/topic/flood\nid:f\nreceipt:sub\n\n\x00")
    _, _, data = w.recv_frame()
    assert data.startswith(b"RECEIPT\nreceipt-id:sub")
    n = 2000
    frames = [b"SEND\ndestination:/topic/flood\n\n%d\x00\n" % i for i in range(n - 1)]
    frames.append(b"SEND\ndestination:/topic/flood\nreceipt:last\n\n%d\x00" % (n - 1))
    message = b"".join(frames)
    size = 8192
    chunks = [message[i:i + size] for i in range(0, len(message), size)]
    out = b"".join(build_frame(OP_TEXT if i == 0 else OP_CONT, c, fin=(i == len(chunks) - 1)) for i, c in enumerate(chunks))
    assert w.send_bytes(out)
    bodies, receipt = [], False
    deadline = time.monotonic() + 30
    pending = b""
    while not (receipt and len(bodies) >= n) and time.monotonic() < deadline:
        _, op, data = w.recv_frame(timeout=max(deadline - time.monotonic(), 0.01))
        assert op in (OP_TEXT, OP_BINARY), (op, data)
        pending += data
        while b"\x00" in pending:
            frame, pending = pending.split(b"\x00", 1)
            frame = frame.lstrip(b"\r\n")
            if frame.startswith(b"MESSAGE\n"):
                bodies.append(int(frame.split(b"\n\n", 1)[1]))
            elif frame.startswith(b"RECEIPT\n"):
                receipt = b"receipt-id:last" in frame
                assert bodies == list(range(n - 1)), "the receipt comes after the earlier frames' messages"
            else:
                raise AssertionError(f"unexpected frame {frame[:200]!r}")
    assert receipt, f"no RECEIPT for the last frame; got {len(bodies)} messages"
    assert bodies == list(range(n))
    frames, closed = w.read_all_until_close(0.3)
    assert not closed and close_code(frames) is None
