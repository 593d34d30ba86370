"""`http.tcp-nodelay`: the setting reaches the gateway's accepted sockets (read back from the
gateway's own file descriptors, duplicated with pidfd_getfd), and with Nagle on (`false`) a
burst still arrives complete and in order, for our client and for stomp.py."""
import ctypes
import os
import socket

from burst import assert_burst_arrives_complete

SYS_PIDFD_GETFD = 438  # same number on x86_64 and aarch64


def gateway_socket_nodelay(pid: int, peer: tuple) -> int:
    """TCP_NODELAY of the gateway's socket whose peer address is `peer`."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            assert fd >= 0, f"pidfd_getfd failed: {os.strerror(ctypes.get_errno())}"
            s = socket.socket(fileno=fd)
            try:
                if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM and s.getpeername() == peer:
                    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                pass  # the listening socket has no peer
            finally:
                s.close()  # closes our duplicate only
    finally:
        os.close(pidfd)
    raise AssertionError(f"no gateway socket connected to {peer}")


def test_nodelay_is_on_by_default(gateway_factory, client):
    gw = gateway_factory()
    s = client(gw)
    s.connect()
    assert gateway_socket_nodelay(gw.proc.pid, s.ws.sock.getsockname()) != 0


def test_nagle_mode_delivers_every_message_in_order(gateway_factory, client, stomppy):
    gw = gateway_factory("http.tcp-nodelay=false")
    subs = assert_burst_arrives_complete(gw, client, stomppy, "/topic/nagle", 300)
    assert gateway_socket_nodelay(gw.proc.pid, subs[0].ws.sock.getsockname()) == 0
