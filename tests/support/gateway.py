"""A real ``switchboard`` process on a free port: start with ``--set`` args and/or YAML text,
wait for ``/health``, stop with SIGTERM and report the exit code. Logs (and the YAML) go to
``test-artifacts/<name>.log`` (``.yaml``). Also ``metric``, a reader of ``/metrics`` text."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
import requests

from support.paths import ARTIFACTS, BINARY, NIO_LOOP_GONE
from support.process import free_port, popen_retrying, terminate
from support.stompclient import StompClient


def metric(text: str, name: str, **labels) -> float:
    """The value of `name{labels}` in Prometheus text (labels: a subset of the sample's)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{([^}]*)\})? ([0-9.e+-]+)$", line)
        if not m or m.group(1) != name:
            continue
        got = m.group(3) or ""
        if all(f'{k}="{v}"' in got for k, v in labels.items()):
            return float(m.group(4))
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


class Gateway:
    #: Seconds to wait for /health after start.
    startup_timeout = 20.0

    def __init__(self, sets=(), yaml: str | None = None, name: str = "gateway", log_level: str = "debug",
                 env: dict | None = None):
        """`sets` are `--set` values, `yaml` the configuration file's text, `env` extra
        environment variables."""
        if not os.path.exists(BINARY):
            pytest.fail(f"switchboard binary not found at {BINARY} (set SWITCHBOARD_BIN or run swift build)")
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.name = name
        args = [BINARY, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", log_level]
        if yaml is not None:
            cfg = ARTIFACTS / f"{name}.yaml"
            cfg.write_text(yaml)
            args += ["--config", str(cfg)]
        for s in sets:
            args += ["--set", s]
        self.args = args
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = popen_retrying(args, stdout=self.log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env} if env else None)
        self._wait_healthy(self.startup_timeout)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stomp"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _wait_healthy(self, timeout: float):
        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {self.proc.returncode}; see {self.log_path}")
            try:
                return requests.get(self.base + "/health", timeout=0.5).status_code == 200
            except requests.RequestException:
                return False

        deadline = time.monotonic() + timeout
        while not healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"switchboard not healthy after {timeout}s; see {self.log_path}")
            time.sleep(0.05)  # poll interval

    def health(self) -> dict:
        return requests.get(self.base + "/health", timeout=2).json()

    def wait_health(self, predicate, timeout: float = 5.0) -> dict:
        """Polls /health until `predicate(json)` holds; returns the last JSON."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if predicate(h) or time.monotonic() > deadline:
                return h
            time.sleep(0.05)  # poll interval

    def metric(self, name: str, **labels) -> float:
        return metric(requests.get(self.base + "/metrics", timeout=3).text, name, **labels)

    def session_errors(self, kind: str) -> float:
        """switchboard_session_errors_total{kind=`kind`}."""
        return self.metric("switchboard_session_errors_total", kind=kind)

    def publish(self, topic: str, message: str, http_headers=None, **extra) -> requests.Response:
        """POST /api/notification; `extra` are more JSON fields (e.g. `headers`, the message's
        STOMP headers), `http_headers` the request's own (e.g. an API key)."""
        return requests.post(self.base + "/api/notification", json={"topic": topic, "message": message, **extra},
                             headers=http_headers or {}, timeout=5)

    def publish_user(self, user: str, topic: str, message: str, http_headers=None) -> requests.Response:
        return requests.post(f"{self.base}/api/users/{user}/notification", json={"topic": topic, "message": message},
                             headers=http_headers or {}, timeout=5)

    def client(self, **kw) -> StompClient:
        return StompClient(self.ws_url, **kw)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills and fails if it hangs)."""
        code = terminate(self.proc, timeout)
        self.log.close()
        if code == "killed":
            raise AssertionError(f"switchboard did not exit within {timeout}s of SIGTERM; see {self.log_path}")
        if NIO_LOOP_GONE in self.log_path.read_text(errors="replace"):
            raise AssertionError(f"switchboard scheduled work on a stopped event loop; see {self.log_path}")
        return code
