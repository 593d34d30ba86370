"""Fixtures for the Switchboard end-to-end tests.

- ``gateway_factory`` (module scope): starts ``switchboard`` processes with extra
  ``--set`` args and/or YAML config text, waits for ``/health``, and on teardown sends
  SIGTERM and asserts a clean exit (code 0 within 10 s). Each gateway's stderr/stdout
  goes to ``test-artifacts/<test-module>-<n>.log``.
- ``gateway`` (module scope): one gateway with default settings.
- ``webhook`` (module scope server, reset per test by ``hook``): a threaded HTTP server
  recording requests and answering with per-test replies, status and delay.
- ``client``: factory for our own STOMP clients (closed after the test).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import stomp

sys.path.insert(0, str(Path(__file__).parent))
from stompclient import StompClient  # noqa: E402

from gatewayproc import ARTIFACTS, BINARY, REPO, Gateway, free_port  # noqa: E402,F401


@pytest.fixture(scope="module")
def gateway_factory(request):
    started: list[Gateway] = []
    module = request.module.__name__.rsplit(".", 1)[-1]

    def start(*sets: str, yaml: str | None = None) -> Gateway:
        gw = Gateway(sets, yaml, name=f"{module}-{len(started)}")
        started.append(gw)
        return gw

    yield start
    failures = []
    for gw in started:
        already_exited = gw.proc.poll() is not None
        code = gw.stop()
        if not already_exited and code != 0:
            failures.append(f"{gw.name} exited {code} after SIGTERM; see {gw.log_path}")
    assert not failures, failures


@pytest.fixture(scope="module")
def gateway(gateway_factory) -> Gateway:
    return gateway_factory()


@pytest.fixture
def client(request):
    """client(gateway, **kw) -> connected-later StompClient; all closed after the test."""
    made: list[StompClient] = []

    def make(gw: Gateway, **kw) -> StompClient:
        c = gw.client(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Collector(stomp.ConnectionListener):
    """stomp.py listener recording frames, with timeout-bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.messages: list[tuple[dict, str]] = []
        self.errors: list[tuple[dict, str]] = []
        self.receipts: list[str] = []
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.disconnected = False

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_message(self, frame):
        self._add(lambda: self.messages.append((dict(frame.headers), frame.body)))

    def on_error(self, frame):
        self._add(lambda: self.errors.append((dict(frame.headers), frame.body)))

    def on_receipt(self, frame):
        self._add(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_heartbeat(self):
        self._add(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_heartbeat_timeout(self):
        self._add(lambda: setattr(self, "heartbeat_timeouts", self.heartbeat_timeouts + 1))

    def on_disconnected(self):
        self._add(lambda: setattr(self, "disconnected", True))

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[tuple[dict, str]]:
        assert self.wait_for(lambda: len(self.messages) >= n, timeout), \
            f"stomp.py got {len(self.messages)} of {n} messages (errors: {self.errors})"
        return list(self.messages)

    def wait_receipt(self, receipt: str, timeout: float = 5.0):
        assert self.wait_for(lambda: receipt in self.receipts, timeout), f"no receipt {receipt} (errors: {self.errors})"

    def wait_error(self, timeout: float = 5.0) -> tuple[dict, str]:
        assert self.wait_for(lambda: self.errors, timeout), "stomp.py got no ERROR"
        return self.errors[0]


@pytest.fixture
def stomppy(request):
    """stomppy(gateway, heartbeats=(0,0)) -> (connected stomp.py connection, Collector)."""
    conns = []

    def make(gw: Gateway, heartbeats=(0, 0), connect=True):
        conn = stomp.WSConnection([("127.0.0.1", gw.port)], ws_path="/stomp", heartbeats=heartbeats,
                                  reconnect_attempts_max=1)
        listener = Collector()
        conn.set_listener("test", listener)
        if connect:
            conn.connect(wait=True)
        conns.append(conn)
        return conn, listener

    yield make
    for conn in conns:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:
            pass


# -- webhook server --------------------------------------------------------------------

class WebhookServer:
    """Records POSTed JSON; replies per `status`, `reply` (dict/str/callable(req)->dict) and `delay`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.reply = None
        self.delay = 0.0
        self.event = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                req = {"path": self.path, "headers": dict(self.headers), "raw": raw, "json": body,
                       "received": time.monotonic()}
                server.requests.append(req)
                server.event.set()
                if server.delay:
                    time.sleep(server.delay)
                reply = server.reply(req) if callable(server.reply) else server.reply
                data = b"" if reply is None else (reply.encode() if isinstance(reply, str) else json.dumps(reply).encode())
                try:
                    self.send_response(server.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        self.requests.clear()
        self.status, self.reply, self.delay = 200, None, 0.0
        self.event.clear()

    def wait_request(self, timeout: float = 5.0) -> dict:
        assert self.event.wait(timeout), "webhook was not called"
        return self.requests[-1]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def webhook():
    server = WebhookServer()
    yield server
    server.stop()


@pytest.fixture
def hook(webhook):
    webhook.reset()
    yield webhook
    webhook.reset()
