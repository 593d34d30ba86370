"""The listening side: one socket per event loop on the same port (SO_REUSEPORT), and a port
already in use is still an error at start-up, as without SO_REUSEPORT."""
from __future__ import annotations

import subprocess

import requests

from support.paths import BINARY


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
