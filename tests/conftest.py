"""Fixtures shared by every folder of tests/ (helpers live in tests/support; a folder's own
conftest.py holds only that folder's fixtures).

- ``gateway_factory`` (module scope): starts ``switchboard`` processes with extra ``--set``
  args and/or YAML config text, waits for ``/health``, and on teardown sends SIGTERM and
  asserts a clean exit (code 0 within 10 s). Each gateway's output goes to
  ``test-artifacts/<test-module>-<n>.log``.
- ``gateway`` (module scope): one gateway with default settings.
- ``client``: ``client(gateway, **ws_options)`` -> an unconnected StompClient.
- ``clients``: ``clients(gateway_or_url, connect=True, ws=None, **connect_kw)`` -> a
  StompClient (connected unless ``connect=False``); given a StompClient, just tracks it.
- ``stomppy``: ``stomppy(gateway, heartbeats=(0, 0), connect=True)`` -> (stomp.py connection, Collector).
- ``webhook`` (module scope server, reset per test by ``hook``): see support.webhook.
Clients of all three kinds are closed after the test.
"""
from __future__ import annotations

import pytest

from support.gateway import Gateway
from support.stompclient import StompClient
from support.stomppy import connect_stomppy
from support.webhook import WebhookServer


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
        try:
            code = gw.stop()
        except AssertionError as e:
            failures.append(str(e))
            continue
        if not already_exited and code != 0:
            failures.append(f"{gw.name} exited {code} after SIGTERM; see {gw.log_path}")
    assert not failures, failures


@pytest.fixture(scope="module")
def gateway(gateway_factory) -> Gateway:
    return gateway_factory()


@pytest.fixture
def closing():
    """A list whose items (anything with close()) are closed after the test."""
    made: list = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def client(closing):
    """client(gateway, **ws_options) -> StompClient, not connected yet."""
    def make(gw: Gateway, **kw) -> StompClient:
        c = gw.client(**kw)
        closing.append(c)
        return c

    return make


@pytest.fixture
def clients(closing):
    """clients(gateway_or_url, connect=True, ws=None, **connect_kw) -> StompClient; a StompClient is just tracked."""
    def make(target, connect: bool = True, ws: dict | None = None, **connect_kw) -> StompClient:
        if isinstance(target, StompClient):
            closing.append(target)
            return target
        url = target if isinstance(target, str) else target.ws_url
        c = StompClient(url, timeout=10, **(ws or {}))
        closing.append(c)
        if connect:
            c.connect(**connect_kw)
        return c

    return make


@pytest.fixture
def stomppy():
    """stomppy(gateway, heartbeats=(0,0), connect=True) -> (stomp.py connection, Collector)."""
    conns = []

    def make(gw: Gateway, heartbeats=(0, 0), connect=True):
        conn, listener = connect_stomppy(gw, heartbeats, connect)
        conns.append(conn)
        return conn, listener

    yield make
    for conn in conns:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:
            pass


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
