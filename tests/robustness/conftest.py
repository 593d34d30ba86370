"""Fixtures of tests/robustness (helpers: support.robustness, support.rawws).

- ``gateway`` (module scope): one real ``switchboard`` process with a small frame limit
  (``MAX_FRAME_BYTES``), so oversize cases stay cheap; log in
  ``test-artifacts/robustness-<module>.log``. On teardown it gets SIGTERM and must exit 0.
- ``watcher`` (module scope): a healthy STOMP session subscribed to ``WATCH_TOPIC``.
- ``sockets`` / ``ws``: raw sockets and raw WebSockets (support.rawws) opened by a test,
  closed afterwards.
- ``survives`` (autouse): after every test, asserts the process is alive, ``/health``
  answers ``ok`` and the watcher still receives a message published with
  ``POST /api/notification``.
"""
import pytest

from support.gateway import Gateway
from support.rawws import RawWebSocket
from support.robustness import MAX_FRAME_BYTES, WATCH_TOPIC, assert_survived
from support.stompclient import StompClient


@pytest.fixture(scope="module")
def gateway(request):
    module = request.module.__name__.rsplit(".", 1)[-1]
    gw = Gateway([f"limits.max-frame-bytes={MAX_FRAME_BYTES}"], name=f"robustness-{module}")
    yield gw
    was_alive = gw.alive()
    code = gw.stop()
    assert was_alive, f"switchboard died during the module (exit {code}); see {gw.log_path}"
    assert code == 0, f"switchboard exited {code} after SIGTERM; see {gw.log_path}"


@pytest.fixture(scope="module")
def watcher(gateway):
    c = StompClient(gateway.ws_url)
    c.connect(heartbeat="0,0")
    c.subscribe(WATCH_TOPIC, id="watch", receipt="watch")
    yield c
    c.close()


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
