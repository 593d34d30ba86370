"""`http.tcp-nodelay` and `server.busy-percent`: the settings reach the gateway's accepted
sockets (read back from the gateway's own file descriptors, duplicated with pidfd_getfd); a
busy loop switches its connections to Nagle and back once quiet; and with Nagle on, a burst
still arrives complete and in order, for our client and for stomp.py."""
import ctypes
import os
import socket
import subprocess

import pytest
import requests

from support.burst import assert_burst_arrives_complete, loops_busy, publish_until, subscribed_clients
from support.paths import BINARY
from support.process import wait_until
from support.gateway import metric

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


@pytest.mark.parametrize("key", ["server.busy-percent", "http.nagle-when-busy-percent"])
def test_out_of_range_busy_percent_is_refused(key):
    # The old key is still read, as a fallback for the new one.
    out = subprocess.run([BINARY, "--port", "0", "--set", f"{key}=101"], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "server.busy-percent must be 0…100, got 101" in out.stderr


def test_nodelay_is_on_by_default(gateway_factory, client):
    gw = gateway_factory()
    s = client(gw)
    s.connect()
    assert gateway_socket_nodelay(gw.proc.pid, s.ws.sock.getsockname()) != 0


def test_nagle_mode_delivers_every_message_in_order(gateway_factory, client, stomppy):
    gw = gateway_factory("http.tcp-nodelay=false")
    subs = assert_burst_arrives_complete(gw, client, stomppy, "/topic/nagle", 300)
    assert gateway_socket_nodelay(gw.proc.pid, subs[0].ws.sock.getsockname()) == 0


def test_busy_loop_switches_to_nagle_and_back(gateway_factory, client):
    # 3 %: a steady stream makes the loop "busy" even in a debug build on a loaded machine,
    # and one message per 300 ms is far below the restore line (1.5 %).
    gw = gateway_factory("server.busy-percent=3", "server.threads=1")
    subs = subscribed_clients(gw, client, "/topic/busy", 20)
    peer = subs[0].ws.sock.getsockname()
    assert gateway_socket_nodelay(gw.proc.pid, peer) != 0
    pub = client(gw)
    pub.connect()
    sent = []
    publish_until(pub, "/topic/busy", sent, lambda: gateway_socket_nodelay(gw.proc.pid, peer) == 0,
                  "the busy loop's switch to Nagle")
    assert loops_busy(gw) == 1

    # Quiet: the switch back happens at the start of a flush pass once 5 windows of 100 ms
    # were quiet, so send a message now and then until it shows.
    def restored():
        sent.append(f"after{len(sent)}")
        pub.send("/topic/busy", sent[-1], receipt=sent[-1])
        return gateway_socket_nodelay(gw.proc.pid, peer) != 0
    wait_until(restored, timeout=10, interval=0.3, what="TCP_NODELAY restored")
    text = requests.get(f"{gw.base}/metrics").text
    assert metric(text, "switchboard_event_loops_busy") == 0
    assert metric(text, "switchboard_busy_mode_switches_total") >= 2
    for s in subs:
        assert [s.expect_message().text for _ in range(len(sent))] == sent


def test_busy_mode_leaves_tcp_nodelay_alone_when_it_is_off(gateway_factory, client):
    # Busy mode still widens the write coalescing, but the sockets keep Nagle throughout.
    gw = gateway_factory("http.tcp-nodelay=false", "server.busy-percent=1", "server.threads=1")
    s = client(gw)
    s.connect()
    s.subscribe("/topic/off", id="0", receipt="r")
    pub = client(gw)
    pub.connect()
    sent = []
    publish_until(pub, "/topic/off", sent, lambda: loops_busy(gw) == 1, "busy mode")
    assert gateway_socket_nodelay(gw.proc.pid, s.ws.sock.getsockname()) == 0
    pub.send("/topic/off", "after", receipt="after")
    sent.append("after")
    assert [s.expect_message().text for _ in range(len(sent))] == sent
    assert gateway_socket_nodelay(gw.proc.pid, s.ws.sock.getsockname()) == 0
