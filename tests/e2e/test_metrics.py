"""GET /metrics: Prometheus text with the gateway's counters and gauges, and health endpoints."""
import requests

from support.gateway import metric
from support.stompclient import StompClient


def test_metrics_follow_activity(gateway):
    base = gateway.base
    before = requests.get(f"{base}/metrics").text
    delivered0 = metric(before, "switchboard_messages_delivered_total")
    errors0 = metric(before, "switchboard_session_errors_total", kind="protocol")
    c = StompClient(gateway.ws_url)
    c.connect(version="1.1")
    c.subscribe("/topic/metrics", id="1", receipt="r")
    assert requests.post(f"{base}/api/notification", json={"topic": "/topic/metrics", "message": "m"}).status_code == 200
    c.expect_message()
    text = requests.get(f"{base}/metrics").text
    assert requests.get(f"{base}/metrics").headers["content-type"].startswith("text/plain")
    assert metric(text, "switchboard_connections") >= 1
    assert metric(text, "switchboard_sessions", version="1.1") >= 1
    assert metric(text, "switchboard_subscriptions") >= 1
    assert metric(text, "switchboard_destinations_active") >= 1
    assert metric(text, "switchboard_frames_in_total", command="SUBSCRIBE") >= 1
    assert metric(text, "switchboard_frames_out_total", command="MESSAGE") >= 1
    assert metric(text, "switchboard_frames_out_total", command="RECEIPT") >= 1
    assert metric(text, "switchboard_messages_delivered_total") >= delivered0 + 1
    assert metric(text, "switchboard_bytes_out_total") > 0
    assert metric(text, "hb_requests", http_route="/api/notification", http_response_status_code="200") >= 1
    c.send_frame("FOO", {})
    c.expect_error("unknown command 'FOO'")
    text = requests.get(f"{base}/metrics").text
    assert metric(text, "switchboard_session_errors_total", kind="protocol") >= errors0 + 1


def test_health_live_and_ready(gateway):
    assert requests.get(f"{gateway.base}/health/live").json() == {"status": "live"}
    r = requests.get(f"{gateway.base}/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
