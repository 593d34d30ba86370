"""Small helpers for raw sockets in tests."""
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
