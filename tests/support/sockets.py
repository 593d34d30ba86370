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
