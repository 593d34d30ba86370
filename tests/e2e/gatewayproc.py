"""A real ``switchboard`` process on a free port, shared by the pytest suites
(tests/e2e, tests/security, tests/robustness): start with ``--set`` args and/or YAML text,
wait for ``/health``, stop with SIGTERM and report the exit code. Logs go to
``test-artifacts/<name>.log``."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from stompclient import StompClient

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / ".build" / "debug" / "switchboard"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Polls `predicate` (exceptions count as false) until true, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Gateway:
    #: Seconds to wait for /health after start.
    startup_timeout = 15.0

    def __init__(self, sets=(), yaml: str | None = None, name: str = "gateway"):
        if not os.path.exists(BINARY):
            self.missing_binary(f"switchboard binary not found at {BINARY} (set SWITCHBOARD_BIN or run swift build)")
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.name = name
        args = [BINARY, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "debug"]
        if yaml is not None:
            cfg = ARTIFACTS / f"{name}.yaml"
            cfg.write_text(yaml)
            args += ["--config", str(cfg)]
        for s in sets:
            args += ["--set", s]
        self.args = args
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = self.popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_healthy(self.startup_timeout)

    def missing_binary(self, message: str):
        pytest.fail(message)

    def popen(self, args, **kw) -> subprocess.Popen:
        return subprocess.Popen(args, **kw)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stomp"

    def _wait_healthy(self, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(self.base + "/health", timeout=0.5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"switchboard not healthy after {timeout}s; see {self.log_path}")

    def health(self) -> dict:
        return requests.get(self.base + "/health", timeout=2).json()

    def wait_health(self, predicate, timeout: float = 5.0) -> dict:
        """Polls /health until `predicate(json)` holds; returns the last JSON."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if predicate(h) or time.monotonic() > deadline:
                return h
            time.sleep(0.05)

    def publish(self, topic: str, message: str, **extra) -> requests.Response:
        return requests.post(self.base + "/api/notification", json={"topic": topic, "message": message, **extra}, timeout=5)

    def client(self, **kw) -> StompClient:
        return StompClient(self.ws_url, **kw)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills and fails if it hangs)."""
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


class ProcessCluster:
    """Processes of a test cluster (gateways, haproxy, Redis…) in `self.procs`, gateways on
    `self.gw_ports` behind haproxy on `self.lb_port`."""
    procs: dict
    gw_ports: list
    lb_port: int

    def stop(self):
        """SIGTERM to every process, then their exit codes ("killed" after 10 s)."""
        codes = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for key, p in list(self.procs.items()):
            try:
                codes[key] = p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[key] = "killed"
        return codes

    @property
    def lb_url(self):
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def lb_ws(self):
        return f"ws://127.0.0.1:{self.lb_port}/stomp"

    def gw_url(self, i):
        return f"http://127.0.0.1:{self.gw_ports[i]}"

    def gw_ws(self, i):
        return f"ws://127.0.0.1:{self.gw_ports[i]}/stomp"
