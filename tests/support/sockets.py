"""Small helpers for raw sockets in tests."""
import json
import socket


def recv_until(sock: socket.socket, marker: bytes = b"\r\n\r\n", data: bytes = b"") -> bytes:
    """Reads until `marker` has arrived (or the peer closed); returns everything read."""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def tcp_queue_bytes(port: int, queue: str) -> int:
    """The largest `queue` ("tx": sent but not acknowledged, or not sent yet; "rx": received but
    not read) among the established TCP connections on local `port` (/proc/net/tcp)."""
    column = 0 if queue == "tx" else 1
    largest = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
                largest = max(largest, int(fields[4].split(":")[column], 16))
    return largest


def read_http_response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict, object, bytes]:
    """(status, headers with lower-case names, JSON body or None, bytes read past it) of the
    next `Content-Length` framed answer on `sock`; `data` is what was read of it already."""
    data = recv_until(sock, b"\r\n\r\n", data)
    assert b"\r\n\r\n" in data, f"connection closed: {data!r}"
    raw_head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = raw_head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        rest += chunk
    body, rest = rest[:length], rest[length:]
    return int(status_line.split()[1]), headers, json.loads(body) if body else None, rest
