"""RFC 6455 conformance of the gateway's WebSocket layer, and control bytes in STOMP, over
real sockets (hand-built frames, support/rawws.py). Same module gateway, watcher and `survives` check
as test_websocket_robustness.py (tests/robustness/conftest.py).

The policy under test (docs/stomp.md, "A WebSocket-level error is answered one way"): every
WebSocket-level error is answered with one close frame carrying the code and a short
plain-English reason, then the TCP connection is closed; no STOMP ERROR frame and no
internal names. 1002 for protocol errors, 1007 for a text message or close reason that is not
UTF-8 (§8.1). A NUL between STOMP frames is skipped like a heart-beat EOL, and an ERROR's
`message` header never holds a raw control byte.
"""
from __future__ import annotations

import re
import struct

import pytest

from support.rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, close_code, stomp_frames
from support.robustness import expect_protocol_close

SUBSCRIBE = b"SUBSCRIBE\ndestination:/topic/u8\nid:1\nreceipt:s\n\n\x00"
SEND_HEAD = b"SEND\ndestination:/topic/u8\nreceipt:r\n\n"
NOT_UTF8 = b"text message is not valid UTF-8"


def subscribed(ws):
    w = ws()
    w.send_frame(OP_TEXT, SUBSCRIBE)
    _, _, data = w.recv_frame()
    assert data.startswith(b"RECEIPT\nreceipt-id:s"), data
    return w


def headers_of(frame: bytes) -> dict[bytes, bytes]:
    """The header lines of one STOMP frame (STOMP 1.2 escapes undone)."""
    head = frame.split(b"\n\n", 1)[0].split(b"\n")[1:]
    escapes = {b"n": b"\n", b"c": b":", b"r": b"\r", b"\\": b"\\"}
    out = {}
    for line in head:
        name, value = line.split(b":", 1)
        out.setdefault(name, re.sub(rb"\\(.)", lambda m: escapes[m.group(1)], value))
    return out


def assert_printable_header_block(frame: bytes):
    head = frame.split(b"\n\n", 1)[0]
    assert not any(b < 0x20 and b != 0x0A for b in head), f"raw control byte in headers: {head!r}"


# -- UTF-8 in text messages (RFC 6455 §8.1) ----------------------------------------------------

UTF8_FAIL = {
    "one-frame": [(OP_TEXT, True, SEND_HEAD + b"\xff\xfe\x00")],
    "surrogate": [(OP_TEXT, True, SEND_HEAD + b"\xed\xa0\x80\x00")],
    "overlong": [(OP_TEXT, True, SEND_HEAD + b"\xc0\xaf\x00")],
    "in-continuation": [(OP_TEXT, False, SEND_HEAD), (OP_CONT, True, b"ok\xff\x00")],
    "code-point-broken-across-fragments": [(OP_TEXT, False, SEND_HEAD + b"\xe2\x82"), (OP_CONT, True, b"(\x00")],
    "message-ends-inside-code-point": [(OP_TEXT, True, SEND_HEAD + b"x\x00\xe2\x82")],
    "last-fragment-ends-inside-code-point": [(OP_TEXT, False, SEND_HEAD + b"x"), (OP_CONT, True, b"\x00\xf0\x9f")],
}


@pytest.mark.parametrize("fragments", list(UTF8_FAIL.values()), ids=list(UTF8_FAIL))
def test_text_message_not_utf8_closes_1007(ws, fragments):
    """A text message that is not valid UTF-8, whole or split across fragments: close 1007
    'text message is not valid UTF-8' and nothing else (its SEND is not delivered, no STOMP
    ERROR), then TCP close."""
    w = subscribed(ws)
    for opcode, fin, payload in fragments:
        w.send_frame(opcode, payload, fin=fin)
    expect_protocol_close(w, 1007, reason=NOT_UTF8, no_stomp=True)


@pytest.mark.parametrize("cut", [1, 2, 3], ids=["after-byte-1", "after-byte-2", "after-byte-3"])
def test_code_point_split_across_fragments_is_valid(ws, cut):
    """A 4-byte code point (U+1F600) split across a text frame and a continuation, at each of
    its inner boundaries, is valid: RECEIPT, then the MESSAGE with the body intact, connection open."""
    w = subscribed(ws)
    emoji = "\U0001F600".encode()
    w.send_frame(OP_TEXT, SEND_HEAD + emoji[:cut], fin=False)
    w.send_frame(OP_CONT, emoji[cut:] + b"\x00")
    frames, closed = w.read_all_until_close(1.0)
    assert not closed and close_code(frames) is None, frames
    stomp = stomp_frames(frames)
    assert [f.split(b"\n", 1)[0] for f in stomp] == [b"RECEIPT", b"MESSAGE"], frames
    assert stomp[1].endswith(b"\n\n" + emoji)


# -- close frames (RFC 6455 §5.5.1, §7.4) -----------------------------------------------------

def test_close_reason_not_utf8_closes_1007(ws):
    w = ws()
    w.send_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye\xff")
    expect_protocol_close(w, 1007, reason=b"close reason is not valid UTF-8", no_stomp=True)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_code_closes_1002(ws, code):
    """Codes no endpoint may send (reserved, 'no status', 'abnormal', 'TLS', unassigned, out of
    range): close 1002 'invalid close code N'."""
    w = ws()
    w.send_frame(OP_CLOSE, struct.pack("!H", code) + b"bye")
    expect_protocol_close(w, 1002, reason=f"invalid close code {code}".encode(), no_stomp=True)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_valid_close_code_is_echoed(ws, code):
    """Codes of RFC 6455 §7.4.1, the IANA registry (1012-1014) and 3000-4999, with a UTF-8
    reason: the code is echoed and the connection closed."""
    w = ws()
    w.send_frame(OP_CLOSE, struct.pack("!H", code) + "au revoir \u20ac".encode())
    expect_protocol_close(w, code, reason=b"", no_stomp=True)


# -- one policy for protocol errors -----------------------------------------------------------

CONTROL_OVER_125 = {"close": OP_CLOSE, "ping": OP_PING, "pong": OP_PONG}


@pytest.mark.parametrize("opcode", list(CONTROL_OVER_125.values()), ids=list(CONTROL_OVER_125))
def test_control_frame_over_125_bytes_same_policy(ws, opcode):
    """A 126-byte control frame is a protocol error like any other: close 1002 with a plain
    reason, no STOMP ERROR, and no internal name (SwiftNIO's error cases) on the wire."""
    w = ws()
    payload = struct.pack("!H", 1000) + b"r" * 124 if opcode == OP_CLOSE else b"p" * 126
    w.send_frame(opcode, payload)
    frames, closed = w.read_all_until_close(5)
    assert closed and frames == [(OP_CLOSE, struct.pack("!H", 1002) + b"control frame longer than 125 bytes")], frames


# -- NUL and control bytes in STOMP -----------------------------------------------------------

@pytest.mark.parametrize("gap", [b"\x00", b"\x00\x00", b"\x00\n", b"\n\x00\r\n"], ids=["nul", "two-nuls", "nul-lf", "lf-nul-crlf"])
def test_stray_nul_between_frames_is_skipped(ws, gap):
    """Decision: NULs between frames are skipped like heart-beat EOLs (some clients send an
    extra NUL or NUL + EOL after a frame). `SUBSCRIBE...\\0\\0SEND...` subscribes and sends:
    RECEIPT and MESSAGE, the session stays open."""
    w = ws()
    w.send_frame(OP_TEXT, b"SUBSCRIBE\ndestination:/topic/nul\nid:1\n\n\x00" + gap
                 + b"SEND\ndestination:/topic/nul\nreceipt:r\n\nhi\x00" + gap)
    frames, closed = w.read_all_until_close(1.0)
    assert not closed and close_code(frames) is None, frames
    assert [f.split(b"\n", 1)[0] for f in stomp_frames(frames)] == [b"RECEIPT", b"MESSAGE"], frames


ERROR_CASES = {
    "control-byte-before-command": (b"\x01SEND\ndestination:/topic/x\n\nx\x00", b"unknown command '\\x01SEND'"),
    "escape-sequence-in-command": (b"\x1b[2JSEND\n\n\x00", b"unknown command '\\x1b[2JSEND'"),
    "nul-in-malformed-header": (b"SEND\ndestination:/topic/x\nbad\x00line\n\n\x00", b"malformed header line 'bad\\x00line': expected name:value"),
    "nul-in-destination": (b"SUBSCRIBE\ndestination:/nope\x00x\nid:1\n\n\x00", None),
}


@pytest.mark.parametrize("data,message", list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_error_message_never_carries_raw_control_bytes(ws, data, message):
    """Client bytes quoted in an ERROR's `message` header are written with control
    characters as \\xNN; whatever the source, no header holds a raw NUL, CR or other control
    byte, so the ERROR frame arrives whole (its body, sized by content-length, may repeat the
    client's bytes)."""
    w = ws()
    w.send_frame(OP_TEXT, data)
    frames, closed = w.read_all_until_close(5)
    assert closed and close_code(frames) == 1000, frames
    data_frames = [p for op, p in frames if op in (OP_TEXT, OP_BINARY)]
    assert len(data_frames) == 1 and data_frames[0].startswith(b"ERROR\n"), frames
    error = data_frames[0]
    assert_printable_header_block(error)
    body = error.split(b"\n\n", 1)[1]
    assert len(body) == int(headers_of(error)[b"content-length"]) + 1 and body.endswith(b"\x00"), error
    if message is not None:
        assert headers_of(error)[b"message"] == message


def test_user_header_with_nul_from_http_api(ws, gateway):
    """A header value with CR and LF published through the HTTP API reaches a STOMP
    subscriber as one well-formed MESSAGE, LF and CR escaped; one with a NUL (which a STOMP
    header cannot carry) is refused with a 400 naming the field, nothing published."""
    w = ws()
    w.send_frame(OP_TEXT, b"SUBSCRIBE\ndestination:/topic/nulapi\nid:1\nreceipt:s\n\n\x00")
    assert w.recv_frame()[2].startswith(b"RECEIPT")
    r = gateway.publish("/topic/nulapi", "body", headers={"x-h": "a\u0000b"})
    assert r.status_code == 400 and r.json()["field"] == "headers", r.text
    r = gateway.publish("/topic/nulapi", "body", headers={"x-h": "a b\rc\nd"})
    assert r.status_code == 200, r.text
    _, op, payload = w.recv_frame()
    assert op == OP_TEXT and payload.startswith(b"MESSAGE\n"), payload
    assert payload.count(b"\x00") == 1 and payload.endswith(b"body\x00"), payload
    assert_printable_header_block(payload)
    assert headers_of(payload)[b"x-h"] == b"a b\rc\nd"
