"""A small STOMP 1.0-1.2 client over WebSocket, written for the end-to-end tests.

It is deliberately low level: tests can send raw bytes (as text or binary WebSocket
messages, split or batched however they like), and every received frame is parsed by
an incremental parser that also counts heart-beat EOLs. It is the "own client" of the
interop tests, next to stomp.py.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import websocket

# Header escaping (STOMP 1.1 has no \r escape, 1.2 does; 1.0 escapes nothing).
_ESCAPES_12 = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}


class StompError(Exception):
    pass


class ConnectionClosed(StompError):
    """The server closed the WebSocket (or TCP connection)."""


class ProtocolViolation(StompError):
    """The server sent something that is not valid STOMP."""


def escape(value: str, version: str) -> str:
    if version == "1.0":
        return value
    table = dict(_ESCAPES_12)
    if version == "1.1":
        table.pop("\r")
    return "".join(table.get(ch, ch) for ch in value)


def unescape(value: str, version: str) -> str:
    if version == "1.0" or "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            nxt = value[i + 1 : i + 2]
            if nxt not in _UNESCAPES or (nxt == "r" and version == "1.1"):
                raise ProtocolViolation(f"undefined escape sequence \\{nxt} in {value!r}")
            out.append(_UNESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


@dataclass
class Frame:
    command: str
    header_list: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def headers(self) -> dict[str, str]:
        """Headers as a dict; for repeated headers the first occurrence wins (spec)."""
        out: dict[str, str] = {}
        for name, value in self.header_list:
            out.setdefault(name, value)
        return out

    def get(self, name: str, default=None):
        return self.headers.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def encode_frame(command: str, headers=None, body: bytes | str = b"", version: str = "1.2",
                 content_length: bool = True) -> bytes:
    """Encodes a frame; header values are escaped for 1.1+ except in CONNECT/STOMP."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    do_escape = command not in ("CONNECT", "STOMP", "CONNECTED")
    lines = [command]
    for name, value in items:
        if do_escape:
            lines.append(f"{escape(str(name), version)}:{escape(str(value), version)}")
        else:
            lines.append(f"{name}:{value}")
    if content_length and body and not any(n == "content-length" for n, _ in items):
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body + b"\x00"


class FrameParser:
    """Incremental STOMP frame parser. Feed bytes, get complete frames."""

    def __init__(self, version: str = "1.2"):
        self.version = version
        self.buffer = bytearray()
        self.heartbeats = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> Frame | None:
        buf = self.buffer
        # Heart-beats: EOLs between frames.
        while buf[:1] == b"\n" or buf[:2] == b"\r\n":
            n = 1 if buf[:1] == b"\n" else 2
            del buf[:n]
            self.heartbeats += 1
        if not buf:
            return None
        end = buf.find(b"\n\n")
        end_crlf = buf.find(b"\r\n\r\n")
        if end < 0 and end_crlf < 0:
            return None
        if end_crlf >= 0 and (end < 0 or end_crlf < end):
            head, body_start = bytes(buf[:end_crlf]), end_crlf + 4
        else:
            head, body_start = bytes(buf[:end]), end + 2
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in head.split(b"\n")]
        command = lines[0].decode("utf-8")
        version = "1.0" if command == "CONNECTED" else self.version
        header_list = []
        for raw in lines[1:]:
            text = raw.decode("utf-8")
            if ":" not in text:
                raise ProtocolViolation(f"malformed header line {text!r}")
            name, value = text.split(":", 1)
            header_list.append((unescape(name, version), unescape(value, version)))
        length = next((v for n, v in header_list if n == "content-length"), None)
        if length is not None:
            n = int(length)
            if len(buf) < body_start + n + 1:
                return None
            body = bytes(buf[body_start : body_start + n])
            if buf[body_start + n] != 0:
                raise ProtocolViolation("body not followed by NUL after content-length bytes")
            del buf[: body_start + n + 1]
        else:
            nul = buf.find(b"\x00", body_start)
            if nul < 0:
                return None
            body = bytes(buf[body_start:nul])
            del buf[: nul + 1]
        return Frame(command, header_list, body)


class StompClient:
    """One STOMP session over one WebSocket connection."""

    def __init__(self, url: str, subprotocols=None, timeout: float = 5.0, version: str = "1.2", **ws_options):
        """`ws_options` go to websocket.create_connection (e.g. sockopt=...)."""
        self.url = url
        self.ws = websocket.create_connection(url, subprotocols=subprotocols, timeout=timeout, **ws_options)
        self.version = version
        self.parser = FrameParser(version)
        self.pending: list[Frame] = []
        self.closed = False
        #: The code of the server's close frame, once one came (None: none, or without a code).
        self.close_code: int | None = None
        self.ws_messages = []  # (opcode, length) of every data message received
        self.connected_frame: Frame | None = None

    # -- properties ---------------------------------------------------------
    @property
    def subprotocol(self):
        return self.ws.getsubprotocol()

    @property
    def heartbeats(self) -> int:
        return self.parser.heartbeats

    # -- sending ------------------------------------------------------------
    def send_raw(self, data: bytes | str, binary: bool = False):
        if isinstance(data, str):
            data = data.encode("utf-8")
        opcode = websocket.ABNF.OPCODE_BINARY if binary else websocket.ABNF.OPCODE_TEXT
        self.ws.send(data, opcode=opcode)

    def send_frame(self, command: str, headers=None, body: bytes | str = b"", binary: bool = False):
        self.send_raw(encode_frame(command, headers, body, self.version), binary=binary)

    def connect(self, version: str | None = "1.2", heartbeat: str | None = None, command: str = "CONNECT",
                host: str = "localhost", headers=None, expect_connected: bool = True) -> Frame:
        h = {}
        if version is not None:
            h["accept-version"] = version
        if host is not None:
            h["host"] = host
        if heartbeat is not None:
            h["heart-beat"] = heartbeat
        h.update(headers or {})
        self.send_frame(command, h)
        frame = self.receive()
        if expect_connected:
            assert frame.command == "CONNECTED", f"expected CONNECTED, got {frame.command} {frame.headers}"
            self.version = frame.get("version", "1.0")
            self.parser.version = self.version
            self.connected_frame = frame
        return frame

    def subscribe(self, destination: str, id: str = "0", ack: str | None = None, receipt: str | None = None, **extra):
        h = {"destination": destination, "id": id}
        if ack:
            h["ack"] = ack
        if receipt:
            h["receipt"] = receipt
        h.update(extra)
        self.send_frame("SUBSCRIBE", h)
        if receipt:
            return self.expect_receipt(receipt)

    def unsubscribe(self, id: str = "0", receipt: str | None = None):
        h = {"id": id}
        if receipt:
            h["receipt"] = receipt
        self.send_frame("UNSUBSCRIBE", h)
        if receipt:
            return self.expect_receipt(receipt)

    def send(self, destination: str, body: bytes | str = b"", headers=None, receipt: str | None = None,
             binary: bool = False):
        h = {"destination": destination}
        h.update(headers or {})
        if receipt:
            h["receipt"] = receipt
        self.send_frame("SEND", h, body, binary=binary)
        if receipt:
            return self.expect_receipt(receipt)

    def disconnect(self, receipt: str | None = "bye"):
        h = {"receipt": receipt} if receipt else {}
        self.send_frame("DISCONNECT", h)
        if receipt:
            frame = self.expect_receipt(receipt)
            return frame

    # -- receiving ----------------------------------------------------------
    def _pump(self, deadline: float):
        """Reads one WebSocket message into the parser. Raises TimeoutError or ConnectionClosed."""
        if self.closed:
            raise ConnectionClosed("connection already closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame in time")
        self.ws.settimeout(remaining)
        try:
            opcode, data = self.ws.recv_data(control_frame=False)
        except (websocket.WebSocketTimeoutException, socket.timeout):
            raise TimeoutError("no frame in time") from None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.closed = True
            if len(data) >= 2:
                self.close_code = int.from_bytes(data[:2], "big")
            raise ConnectionClosed("server sent close frame")
        self.ws_messages.append((opcode, len(data)))
        self.pending.extend(self.parser.feed(data))

    def receive(self, timeout: float = 5.0) -> Frame:
        """Next frame (heart-beats are skipped and counted)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            self._pump(deadline)
        return self.pending.pop(0)

    def receive_many(self, n: int, timeout: float = 5.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        return [self.receive(max(deadline - time.monotonic(), 0.001)) for _ in range(n)]

    def receive_commands(self, *commands: str, timeout: float = 5.0) -> dict[str, Frame]:
        """Receives len(commands) frames in any order; returns them by command."""
        frames = self.receive_many(len(commands), timeout)
        got = sorted(f.command for f in frames)
        assert got == sorted(commands), f"expected {sorted(commands)}, got {got}"
        return {f.command: f for f in frames}

    def expect_nothing(self, timeout: float = 0.3):
        """Asserts no frame arrives within `timeout` (heart-beats are fine)."""
        try:
            frame = self.receive(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame.command} {frame.headers} {frame.body[:100]!r}")

    def expect_receipt(self, receipt: str, timeout: float = 5.0) -> Frame:
        frame = self.receive(timeout)
        assert frame.command == "RECEIPT", f"expected RECEIPT {receipt}, got {frame.command} {frame.headers} {frame.body[:200]!r}"
        assert frame["receipt-id"] == receipt
        return frame

    def expect_message(self, timeout: float = 5.0) -> Frame:
        frame = self.receive(timeout)
        assert frame.command == "MESSAGE", f"expected MESSAGE, got {frame.command} {frame.headers} {frame.body[:200]!r}"
        return frame

    def expect_error(self, message: str | None = None, timeout: float = 5.0, closes: bool = True) -> Frame:
        """Next frame must be ERROR (with `message` header equal to `message` when given);
        then the server must close the connection."""
        frame = self.receive(timeout)
        assert frame.command == "ERROR", f"expected ERROR, got {frame.command} {frame.headers} {frame.body[:200]!r}"
        if message is not None:
            assert frame.get("message") == message, f"ERROR message {frame.get('message')!r} != {message!r}"
        if closes:
            assert self.wait_closed(timeout), "connection not closed after ERROR"
        return frame

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Drains until the server closes; True if it did within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                self._pump(deadline)
            except TimeoutError:
                return False
            except ConnectionClosed:
                return True
            except ProtocolViolation:
                raise
        return True

    def close(self):
        try:
            self.ws.close(timeout=0.5)
        except Exception:
            pass
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def send_bursts_until(pub: "StompClient", destination: str, done, size: int = 200, bursts: int = 10,
                      timeout: float = 30) -> int:
    """Sends bursts of `size` SENDs of the bodies 0, 1, 2, … to `destination` in one write each,
    the last of each burst with a receipt it waits for, until `done()` or `bursts` bursts; returns
    how many were sent."""
    sent = 0
    for burst in range(bursts):
        pub.send_raw(b"".join(encode_frame("SEND", {"destination": destination}, str(sent + i)) for i in range(size - 1)))
        sent += size - 1
        pub.send_frame("SEND", {"destination": destination, "receipt": f"burst-{burst}"}, str(sent))
        sent += 1
        pub.expect_receipt(f"burst-{burst}", timeout=timeout)
        if done():
            break
    return sent
