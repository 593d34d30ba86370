"""The listening side: one socket per event loop on the same port (SO_REUSEPORT), and a port
already in use is still an error at start-up, as without SO_REUSEPORT; a connection closed
before its first request is let go at once; out of file descriptors, accepting backs off."""
from __future__ import annotations

import os
import socket
import subprocess
import time

import requests

from support.paths import BINARY
from support.process import wait_until


def listening_sockets(port: int) -> list[str]:
    """Lines of /proc/net/tcp for sockets listening (state 0A) on `port`."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [" ".join(r) for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]


def test_one_listening_socket_per_event_loop(gateway_factory, client):
    gw = gateway_factory("server.threads=3")
    assert len(listening_sockets(gw.port)) == 3
    # Connections land on any of them and work the same.
    clients = [client(gw) for _ in range(12)]
    for i, c in enumerate(clients):
        c.connect()
        c.subscribe("/topic/listen", id=f"s{i}", receipt=f"r{i}")
    requests.post(gw.base + "/api/notification", json={"topic": "/topic/listen", "message": "hi"}, timeout=3).raise_for_status()
    for c in clients:
        assert c.expect_message().text == "hi"


def test_second_instance_on_the_same_port_fails_to_start(gateway_factory):
    gw = gateway_factory("server.threads=2")
    second = subprocess.run([BINARY, "--host", "127.0.0.1", "--port", str(gw.port), "--set", "server.threads=2"],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert "in use" in (second.stdout + second.stderr).lower(), second.stdout + second.stderr
    # The first instance keeps every socket and still serves.
    assert len(listening_sockets(gw.port)) == 2
    assert requests.get(gw.base + "/health", timeout=3).status_code == 200


def test_a_client_that_closes_before_its_first_request_is_let_go_at_once(gateway_factory):
    """A client that sends half a request head (or nothing) and closes its side: no request can
    come any more, so the gateway closes the connection then, not at the handshake timeout (a
    probe held 20,000 descriptors this way with no socket of its own left open)."""
    gw = gateway_factory("http.handshake-timeout-ms=30000")
    for sent in (b"", b"GET /ws HTTP/1.1\r\nHost: x\r\n"):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(sent)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # closed by the gateway, well before 30 s (timeout: 5 s)
        s.close()
    assert requests.get(gw.base + "/health", timeout=3).status_code == 200


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_accepting_backs_off(gateway_factory):
    """At its descriptor limit the gateway pauses accepting (NIO's AcceptBackoffHandler) instead
    of failing accept4 with EMFILE in a loop on every event loop (a probe measured both cores
    busy); once descriptors are free it serves again."""
    gw = gateway_factory("http.handshake-timeout-ms=60000", "server.threads=2")
    pid = gw.proc.pid
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=150:150"], check=True)
    held = []
    try:
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) >= 145, 10, what="the gateway at its descriptor limit")
        before = process_cpu_seconds(pid)
        time.sleep(2)  # a window to measure CPU over, not a wait for a condition
        spent = process_cpu_seconds(pid) - before
        # Spinning on EMFILE took about 2 s of CPU per second here; backing off, next to none.
        assert spent < 0.5, f"{spent:.2f} s of CPU in 2 s at the descriptor limit"
    finally:
        for s in held:
            s.close()
    wait_until(lambda: requests.get(gw.base + "/health", timeout=2).status_code == 200, 10, what="serving again")
