"""Constants and the survival check of the robustness tests (tests/robustness, whose conftest
starts the gateway under test with ``limits.max-frame-bytes=MAX_FRAME_BYTES`` and a watcher
subscribed to ``WATCH_TOPIC``)."""
from __future__ import annotations

import uuid

from support.rawws import OP_CLOSE, RawWebSocket, close_code, close_payload, stomp_frames

# The gateway under test runs with this STOMP frame limit; the WebSocket layer's own limit
# is 1024 bytes more (SwitchboardGateway: maxFrameBytes + 1024).
MAX_FRAME_BYTES = 16384
WS_MAX_FRAME_BYTES = MAX_FRAME_BYTES + 1024
WATCH_TOPIC = "/topic/robust"


def assert_survived(gateway, watcher):
    """The process is alive, /health is ok and the watcher still gets an API publish."""
    assert gateway.alive(), f"switchboard died (exit {gateway.proc.returncode}); see {gateway.log_path}"
    assert gateway.health()["status"] == "ok"
    text = f"still-alive-{uuid.uuid4().hex[:8]}"
    r = gateway.publish(WATCH_TOPIC, text)
    assert r.status_code == 200, r.text
    msg = watcher.expect_message(timeout=5)
    assert msg.text == text


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
