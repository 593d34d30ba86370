"""Fixtures for the robustness tests (tests/robustness).

- ``gateway`` (module scope): one real ``switchboard`` process on a free port
  (``SWITCHBOARD_BIN`` or ``.build/debug/switchboard``) with a small frame limit, so oversize
  cases stay cheap. Its log goes to ``test-artifacts/robustness-<module>.log``. On teardown it
  gets SIGTERM and must exit 0.
- ``watcher`` (module scope): a healthy STOMP session (our own ``StompClient`` from
  tests/e2e) subscribed to ``/topic/robust`` for the whole module.
- ``sockets`` / ``ws``: raw sockets and raw WebSockets (rawws.py) opened by a test, closed
  afterwards; ``expect_protocol_close`` checks how the server ended one.
- ``survives`` (autouse): after every test, asserts the process is alive, ``/health``
  answers ``ok`` and the watcher still receives a message published with
  ``POST /api/notification``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import gatewayproc  # noqa: E402
from gatewayproc import free_port  # noqa: E402,F401
from rawws import OP_CLOSE, RawWebSocket, close_code, close_payload, stomp_frames  # noqa: E402

ARTIFACTS = REPO / "test-artifacts"
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / ".build" / "debug" / "switchboard"))

# The gateway under test runs with this STOMP frame limit; the WebSocket layer's own limit
# is 1024 bytes more (SwitchboardGateway: maxFrameBytes + 1024).
MAX_FRAME_BYTES = 16384
WS_MAX_FRAME_BYTES = MAX_FRAME_BYTES + 1024
WATCH_TOPIC = "/topic/robust"


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    import requests
    r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    return r.status_code, r.content


class Gateway(gatewayproc.Gateway):
    """The shared gateway process (tests/e2e/gatewayproc.py); skipped, not failed, without a binary."""
    startup_timeout = 20.0

    def __init__(self, name: str, sets=()):
        super().__init__(sets, None, name)

    def missing_binary(self, message: str):
        pytest.skip(message)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def gateway(request):
    module = request.module.__name__.rsplit(".", 1)[-1]
    gw = Gateway(f"robustness-{module}", sets=[f"limits.max-frame-bytes={MAX_FRAME_BYTES}"])
    yield gw
    was_alive = gw.alive()
    code = gw.stop()
    assert was_alive, f"switchboard died during the module (exit {code}); see {gw.log_path}"
    assert code == 0, f"switchboard exited {code} after SIGTERM; see {gw.log_path}"


@pytest.fixture(scope="module")
def watcher(gateway):
    from stompclient import StompClient
    c = StompClient(gateway.ws_url)
    c.connect(heartbeat="0,0")
    c.subscribe(WATCH_TOPIC, id="watch", receipt="watch")
    yield c
    c.close()


def assert_survived(gateway, watcher):
    assert gateway.alive(), f"switchboard died (exit {gateway.proc.returncode}); see {gateway.log_path}"
    assert gateway.health()["status"] == "ok"
    text = f"still-alive-{uuid.uuid4().hex[:8]}"
    r = gateway.publish(WATCH_TOPIC, text)
    assert r.status_code == 200, r.text
    msg = watcher.expect_message(timeout=5)
    assert msg.text == text


@pytest.fixture(autouse=True)
def survives(gateway, watcher):
    yield
    assert_survived(gateway, watcher)


@pytest.fixture
def sockets():
    """Raw sockets/WebSockets opened by a test; all closed afterwards (a socket left open
    mid-handshake would block the gateway's graceful shutdown, see
    test_shutdown_not_blocked_by_idle_connections)."""
    opened = []
    yield opened
    for s in opened:
        s.close()


@pytest.fixture
def ws(gateway, sockets):
    """ws(connect=True) -> RawWebSocket, upgraded (and STOMP-connected unless connect=False)."""
    def make(connect: bool = True) -> RawWebSocket:
        w = RawWebSocket(gateway.port)
        sockets.append(w)
        if connect:
            w.stomp_connect()
        return w
    return make


def expect_protocol_close(w: RawWebSocket, code: int, stomp_error: bytes | None = None, reason: bytes | None = None,
                          timeout: float = 5.0, no_stomp: bool = False):
    """The server's close frame has `code` (and `reason`), the TCP connection is closed, and
    a STOMP ERROR contains `stomp_error` (or, with `no_stomp`, nothing but the close frame came)."""
    frames, closed = w.read_all_until_close(timeout)
    assert close_code(frames) == code, f"expected close {code}, got frames {frames!r}"
    assert closed, "server did not close the TCP connection after its close frame"
    if no_stomp:
        assert [op for op, _ in frames] == [OP_CLOSE], frames
    if stomp_error is not None:
        errors = [f for f in stomp_frames(frames) if f.startswith(b"ERROR\n")]
        assert errors and stomp_error in errors[0], f"expected STOMP ERROR containing {stomp_error!r}, got {frames!r}"
    if reason is not None:
        assert close_payload(frames)[2:] == reason
