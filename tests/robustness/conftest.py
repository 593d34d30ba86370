"""Fixtures for the robustness tests (tests/robustness).

- ``gateway`` (module scope): one real ``switchboard`` process on a free port
  (``SWITCHBOARD_BIN`` or ``.build/debug/switchboard``) with a small frame limit, so oversize
  cases stay cheap. Its log goes to ``test-artifacts/robustness-<module>.log``. On teardown it
  gets SIGTERM and must exit 0.
- ``watcher`` (module scope): a healthy STOMP session (our own ``StompClient`` from
  tests/e2e) subscribed to ``/topic/robust`` for the whole module.
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

ARTIFACTS = REPO / "test-artifacts"
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / ".build" / "debug" / "switchboard"))

# The gateway under test runs with this STOMP frame limit; the WebSocket layer's own limit
# is 1024 bytes more (SwitchboardGateway: maxFrameBytes + 1024).
MAX_FRAME_BYTES = 16384
WS_MAX_FRAME_BYTES = MAX_FRAME_BYTES + 1024
WATCH_TOPIC = "/topic/robust"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    import requests
    r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    return r.status_code, r.content


class Gateway:
    def __init__(self, name: str, sets=()):
        if not os.path.exists(BINARY):
            pytest.skip(f"switchboard binary not found at {BINARY} (set SWITCHBOARD_BIN or run swift build)")
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.name = name
        args = [BINARY, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "debug"]
        for s in sets:
            args += ["--set", s]
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if http_get(self.port, "/health", 0.5)[0] == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchboard not healthy after 20s; see {self.log_path}")
            time.sleep(0.05)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stomp"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def health(self) -> dict:
        import requests
        return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=3).json()

    def publish(self, topic: str, message: str):
        import requests
        return requests.post(f"http://127.0.0.1:{self.port}/api/notification",
                             json={"topic": topic, "message": message}, timeout=5)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                raise AssertionError(f"switchboard did not exit within {timeout}s of SIGTERM; see {self.log_path}")
        self.log.close()
        return self.proc.returncode


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
