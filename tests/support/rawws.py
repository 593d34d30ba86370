"""Hand-built WebSocket (RFC 6455) frames over a raw TCP socket, for hostile inputs that no
well-behaved client library will send."""
from __future__ import annotations

import base64
import os
import socket
import struct
import time

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the TCP connection."""


def upgrade_request(port: int, path: str = "/stomp", protocol: str | None = "v12.stomp", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    proto = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{proto}{extra}\r\n").encode()


def build_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
                length: int | None = None, length_form: str | None = None) -> bytes:
    """One WebSocket frame. `length` overrides the advertised payload length (the payload
    sent is still `payload`); `length_form` forces '7', '16' or '64' bit length encoding."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    form = length_form or ("7" if n < 126 else "16" if n < 65536 else "64")
    if form == "7":
        head = struct.pack("!BB", first, mbit | n)
    elif form == "16":
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class RawWebSocket:
    """A client WebSocket with full control over every byte sent."""

    def __init__(self, port: int, protocol: str | None = "v12.stomp", timeout: float = 5.0, handshake: bool = True):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.eof = False
        if handshake:
            self.sock.sendall(upgrade_request(port, protocol=protocol))
            head = self._read_until(b"\r\n\r\n", timeout)
            status = head.split(b"\r\n", 1)[0]
            assert b" 101 " in status, f"upgrade refused: {head!r}"

    # -- raw I/O ------------------------------------------------------------
    def send_bytes(self, data: bytes) -> bool:
        """Sends bytes; False if the server already closed (reset / broken pipe)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> bool:
        return self.send_bytes(build_frame(opcode, payload, **kw))

    def _fill(self, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise Closed
        self.buf += chunk

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next server frame. Raises Closed or TimeoutError."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read_exact(2, deadline)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self._read_exact(n, deadline)

    def read_all_until_close(self, timeout: float = 5.0) -> tuple[list[tuple[int, bytes]], bool]:
        """Reads frames until the server closes the TCP connection or `timeout` passes.
        Returns ([(opcode, payload)...], tcp_closed)."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            try:
                _, op, payload = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            except Closed:
                return frames, True
            except TimeoutError:
                return frames, False
            frames.append((op, payload))

    # -- STOMP helpers ------------------------------------------------------
    def stomp_connect(self):
        self.send_frame(OP_TEXT, b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\x00")
        _, op, payload = self.recv_frame()
        assert op == OP_TEXT and payload.startswith(b"CONNECTED\n"), payload

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    """The status code of the first close frame in `frames` (None: no close frame or no code)."""
    for op, payload in frames:
        if op == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    return None


def close_payload(frames):
    for op, payload in frames:
        if op == OP_CLOSE:
            return payload
    return None


def stomp_frames(frames) -> list[bytes]:
    """The STOMP frames (split at NUL) carried by the data frames in `frames`."""
    data = b"".join(p for op, p in frames if op in (OP_TEXT, OP_BINARY, OP_CONT))
    return [f.lstrip(b"\r\n") for f in data.split(b"\x00") if f.strip(b"\r\n")]
