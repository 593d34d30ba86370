"""Constants and the survival check of the robustness tests (tests/robustness, whose conftest
starts the gateway under test with ``limits.max-frame-bytes=MAX_FRAME_BYTES`` and a watcher
subscribed to ``WATCH_TOPIC``)."""
from __future__ import annotations

import uuid

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
