"""`http.api-port`: a second port for the HTTP API only, on event loops that run no sessions
(examples/haproxy.cfg sends the load balancer's API backend there). Publishing, health and
metrics work on it, WebSocket upgrades get a 404 naming the sessions' port, and the API stays
on `http.port` too."""
from __future__ import annotations

import json
import socket
import subprocess

import requests

from support.paths import BINARY
from support.process import free_port
from support.rawws import upgrade_request


def test_api_port_publishes_to_sessions_on_the_main_port(gateway_factory, client):
    api = free_port()
    gw = gateway_factory(f"http.api-port={api}", "http.api-threads=2")
    c = client(gw)
    c.connect()
    c.subscribe("/topic/api-port", id="s", receipt="r")
    base = f"http://127.0.0.1:{api}"
    assert requests.get(base + "/health/ready", timeout=3).status_code == 200
    # Pipelined on one keep-alive connection (the fast path), in order.
    with requests.Session() as s:
        for i in range(20):
            r = s.post(base + "/api/notification", json={"topic": "/topic/api-port", "message": f"m{i}"}, timeout=3)
            assert r.status_code == 200, r.text
    assert [c.expect_message().text for _ in range(20)] == [f"m{i}" for i in range(20)]
    # The main port still serves the API.
    gw.publish("/topic/api-port", "main").raise_for_status()
    assert c.expect_message().text == "main"
    # Bad input gets the same 4xx JSON naming the field.
    bad = requests.post(base + "/api/notification", json={"message": "x"}, timeout=3)
    assert bad.status_code == 400 and bad.json()["field"] == "topic", bad.text
    # Its requests are counted in the same metrics.
    assert "http_server_request_duration" in requests.get(base + "/metrics", timeout=3).text


def test_websocket_upgrade_on_the_api_port_is_refused(gateway_factory):
    api = free_port()
    gw = gateway_factory(f"http.api-port={api}")
    with socket.create_connection(("127.0.0.1", api), timeout=5) as s:
        s.sendall(upgrade_request(api))
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404"), head
    error = json.loads(body)
    assert error["field"] == "path" and "http.api-port" in error["error"], error
    # The sessions' port is unaffected.
    assert requests.get(gw.base + "/health/ready", timeout=3).status_code == 200


def test_api_port_settings_are_checked():
    def refused(message, *args):
        out = subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=20)
        assert out.returncode != 0, f"started; stderr:\n{out.stderr}"
        assert message in out.stderr, out.stderr

    refused("http.api-port must be 0…65535, got 70000", "--port", "0", "--set", "http.api-port=70000")
    refused("http.api-port must differ from http.port (8181)", "--port", "8181", "--set", "http.api-port=8181")
    refused("http.api-threads must be 1…64, got 0", "--port", "0", "--set", "http.api-port=0", "--set", "http.api-threads=0")
