"""Presence and lifecycle events on the embedded broker (no Redis), POSTed to `events.webhook.url`:
the exact events of a few sessions, presence computed in process (and served by the presence
API), retries of failed POSTs without loss or reordering, drops counted when the receiver is
down and the queue is small, and the `drain` events of a graceful stop."""
from __future__ import annotations

import os
import subprocess
import time

import jwt
import pytest
import requests

from support.gateway import Gateway
from support.paths import BINARY
from support.process import free_port, wait_until
from support.webhook import WebhookServer

SECRET = "events-webhook-suite-hmac-secret-0123456789"


def bearer(user: str) -> dict:
    token = jwt.encode({"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def config(url: str, **events) -> str:
    """The YAML of a gateway whose events go to `url`; `events` are more `events.*` settings
    (`max_queued=3` → `max-queued: 3`, `webhook_backoff_ms=50` → `webhook.backoff-ms: 50`)."""
    webhook = {"url": url, "backoff-ms": 50, "backoff-max-ms": 200, "timeout-ms": 2000}
    top = {}
    for key, value in events.items():
        name = key.replace("_", "-")
        if name.startswith("webhook-"):
            webhook[name[len("webhook-"):]] = value
        else:
            top[name] = value
    lines = ["events:", "  enabled: true"] + [f"  {k}: {v}" for k, v in top.items()] + ["  webhook:"]
    lines += [f"    {k}: {v}" for k, v in webhook.items()]
    lines += ["server:", "  drain-delay-ms: 0", "auth:", "  allow-anonymous: true", "  jwt:", f"    hmac-secret: {SECRET}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def started(request):
    """started(receiver=None, url=None, **events) -> (Gateway, receiver): a gateway posting its
    events to `receiver` (a new WebhookServer by default) or to `url`. Gateways are stopped
    (exit code 0) before the receivers, so their last events can still be delivered."""
    gateways: list[Gateway] = []
    receivers: list[WebhookServer] = []

    def start(receiver: WebhookServer | None = None, url: str | None = None, extra_yaml: str = "", **events):
        if receiver is None and url is None:
            receiver = WebhookServer(keep_alive=True)
        if receiver is not None:
            receivers.append(receiver)
        target = url or receiver.url
        name = f"events-webhook-{request.node.name}-{len(gateways)}"
        gw = Gateway(yaml=config(target, **events) + extra_yaml, name=name)
        gateways.append(gw)
        return gw, receiver

    def adopt(receiver: WebhookServer) -> WebhookServer:
        receivers.append(receiver)
        return receiver

    start.adopt = adopt  # a receiver the test started itself, stopped after the gateways
    yield start
    codes = [gw.stop() for gw in gateways]
    for receiver in receivers:
        receiver.stop()
    assert codes == [0] * len(codes), codes


def delivered(receiver: WebhookServer, resets: bool = False) -> list[dict]:
    """The events of every POST answered 2xx, in the order received; without the process's
    first event, its `presence-reset`, unless `resets`."""
    out: list[dict] = []
    for r in list(receiver.requests):
        if 200 <= r.get("status", 0) < 300:
            out.extend(e for e in r["json"] if resets or e.get("type") != "presence-reset")
    return out


def wait_events(receiver: WebhookServer, n: int, timeout: float = 10.0) -> list[dict]:
    wait_until(lambda: len(delivered(receiver)) >= n, timeout, what=f"{n} events at the webhook")
    return delivered(receiver)


def number(event: dict) -> int:
    """The counter at the end of an event id (`<instance>-e-<incarnation>-<n>`)."""
    return int(event["id"].rsplit("-", 1)[1])


def row(e: dict) -> tuple:
    return (e["type"], e["session"], e.get("user"), e.get("destination"), e.get("subscription"), e.get("reason"))


def test_the_events_of_sessions_reach_the_webhook_in_order(started, clients):
    gw, hook = started()
    instance = gw.health()["instance"]
    alice = clients(gw, headers=bearer("alice"))
    a = alice.connected_frame["session"]
    wait_events(hook, 2)
    alice.subscribe("/topic/room", id="a", receipt="r1")
    wait_events(hook, 4)
    anon = clients(gw)
    x = anon.connected_frame["session"]
    wait_events(hook, 5)
    anon.subscribe("/topic/room", id="x", receipt="r2")
    wait_events(hook, 6)
    # Presence, computed in process, through the presence API.
    room = requests.get(f"{gw.base}/api/presence/topic/room", timeout=5)
    assert room.status_code == 200, room.text
    assert room.json() == {"destination": "/topic/room", "subscribers": 2, "users": ["alice"]}
    assert requests.get(f"{gw.base}/api/users/alice/presence", timeout=5).json() == {
        "user": "alice", "online": True, "instances": {instance: [a]}}
    anon.unsubscribe("x", receipt="r3")
    wait_events(hook, 7)
    alice.disconnect()
    alice.close()
    wait_events(hook, 10)
    anon.close()
    events = wait_events(hook, 11)
    # Before them, the process's presence-reset (its receiver forgets the sessions of a
    # process before, which ended without events).
    reset = delivered(hook, resets=True)[0]
    assert reset["type"] == "presence-reset" and number(reset) == 0 and "session" not in reset, reset
    assert reset["gen"] <= events[0]["gen"], (reset, events[0])
    assert [row(e) for e in events] == [
        ("connected", a, "alice", None, None, None),
        ("user-online", a, "alice", None, None, None),
        ("subscribed", a, "alice", "/topic/room", "a", None),
        ("destination-occupied", a, "alice", "/topic/room", None, None),
        ("connected", x, None, None, None, None),
        ("subscribed", x, None, "/topic/room", "x", None),
        ("unsubscribed", x, None, "/topic/room", "x", None),
        ("disconnected", a, "alice", None, None, "client"),
        ("destination-vacated", a, "alice", "/topic/room", None, None),
        ("user-offline", a, "alice", None, None, "client"),
        ("disconnected", x, None, None, None, "client"),
    ]
    # Ids: this process's counter, one per event; the user's generation counts their events.
    assert all(e["id"].startswith(f"{instance}-e-") for e in events)
    assert [number(e) for e in events] == list(range(1, 12))
    gens = [e["gen"] for e in events if e.get("user") == "alice"]
    # +1 per event of the user, from a counter started at the time in µs.
    assert gens == list(range(gens[0], gens[0] + 7)) and abs(gens[0] / 1e6 - time.time()) < 60
    assert all("gen" not in e for e in events if "user" not in e)
    assert all(e["instance"] == instance and abs(e["time"] / 1000 - time.time()) < 60 for e in events)
    assert all(r["headers"]["Content-Type"].startswith("application/json") for r in hook.requests)
    assert requests.get(f"{gw.base}/api/users/alice/presence", timeout=5).json()["online"] is False
    assert gw.metric("switchboard_lifecycle_facts_dropped_total") == 0


def test_failed_posts_are_retried_without_loss_or_reordering(started, clients):
    hook = WebhookServer(keep_alive=True)
    answers = {"failures": 3}

    def status(_request):
        if answers["failures"] > 0:
            answers["failures"] -= 1
            return 500
        return 200

    hook.status = status
    gw, _ = started(receiver=hook)
    users = [f"user{i}" for i in range(5)]
    sessions = [clients(gw, headers=bearer(u)) for u in users]
    for c in sessions:
        c.subscribe("/topic/busy", id="1", receipt="r")
    for c in sessions:
        c.disconnect()
        c.close()
    # Per user: connected, user-online, subscribed, disconnected, user-offline; the first
    # subscriber also occupies /topic/busy and the last one vacates it.
    events = wait_events(hook, 5 * 5 + 2)
    assert answers["failures"] == 0
    assert len(events) == 27
    assert [number(e) for e in events] == list(range(1, 28)), "lost, repeated or reordered events"
    failed = [r for r in hook.requests if r.get("status") == 500]
    assert len(failed) == 3
    # The first batch was sent four times, unchanged, with its number.
    first_four = hook.requests[:4]
    assert [r.get("status") for r in first_four] == [500, 500, 500, 200]
    assert len({r["raw"] for r in first_four}) == 1
    assert {r["headers"]["X-Switchboard-Batch"] for r in first_four} == {"1"}
    for user in users:
        mine = [e for e in events if e.get("user") == user]
        assert [e["type"] for e in mine if not e["type"].startswith("destination-")] == [
            "connected", "user-online", "subscribed", "disconnected", "user-offline"]
        assert [e["gen"] for e in mine] == list(range(mine[0]["gen"], mine[0]["gen"] + len(mine)))
    types = [e["type"] for e in events]
    assert types.count("destination-occupied") == 1 and types.count("destination-vacated") == 1
    vacated = types.index("destination-vacated")  # right after the last subscriber's disconnect
    assert events[vacated - 1]["type"] == "disconnected" and events[vacated - 1]["session"] == events[vacated]["session"]
    assert gw.metric("switchboard_lifecycle_batch_failures_total") == 3
    assert gw.metric("switchboard_lifecycle_facts_dropped_total") == 0


def test_a_batch_the_receiver_keeps_rejecting_is_dropped_after_five_and_the_rest_flows(started, clients):
    """A 4xx (other than 408/425/429) that does not change: the batch is sent five times, then
    dropped, counted and logged, and the events after it are delivered. A 429 is retried
    like a 5xx (it is not counted towards the five)."""
    hook = WebhookServer(keep_alive=True)
    answers = iter([429, 422, 422, 422, 422, 422])

    def status(_request):
        return next(answers, 200)

    hook.status = status
    gw, _ = started(receiver=hook)
    first = clients(gw)  # anonymous: one `connected`, the whole first batch
    wait_until(lambda: len(hook.requests) >= 6, 10, what="the first batch sent six times")
    second = clients(gw)
    events = wait_events(hook, 1)
    statuses = [r.get("status") for r in hook.requests]
    assert statuses[:6] == [429, 422, 422, 422, 422, 422], statuses
    assert {r["headers"]["X-Switchboard-Batch"] for r in hook.requests[:6]} == {"1"}
    assert len({r["raw"] for r in hook.requests[:6]}) == 1
    # The dropped batch held the first session's `connected`; the next batch goes through.
    assert [e["type"] for e in events] == ["connected"] and events[0]["session"] == second.connected_frame.headers["session"]
    assert number(events[0]) == 2, "the id numbers show the gap the dropped batch left"
    # The dropped batch: the process's presence-reset and that `connected`.
    assert gw.metric("switchboard_lifecycle_events_rejected_total") == 2
    assert gw.metric("switchboard_lifecycle_batch_failures_total") == 6
    log = gw.log_path.read_text(errors="replace")
    assert "rejected a batch again and again" in log and "422" in log
    first.close()


def test_a_2xx_with_a_reply_over_the_limit_accepts_the_batch(started, clients):
    """Any 2xx accepts a batch, whatever its reply's body: one larger than
    `webhooks.max-reply-bytes` (or stalled after the head) failed the call, and the same batch
    was sent again for good while the events behind it piled up."""
    hook = WebhookServer(keep_alive=True)
    hook.reply = "x" * 100
    gw, _ = started(receiver=hook, extra_yaml="webhooks:\n  max-reply-bytes: 16\n")
    first = clients(gw)
    wait_until(lambda: len(hook.requests) >= 1, 10, what="the first batch")
    second = clients(gw)
    wait_until(lambda: any(r["headers"]["X-Switchboard-Batch"] == "2" for r in list(hook.requests)), 10, what="a second batch")
    batches = [r["headers"]["X-Switchboard-Batch"] for r in list(hook.requests)]
    assert batches.count("1") == 1, batches
    assert gw.metric("switchboard_lifecycle_batch_failures_total") == 0
    first.close()
    second.close()


def test_a_full_queue_drops_events_and_counts_them(started, clients):
    port = free_port()
    gw, _ = started(url=f"http://127.0.0.1:{port}/events", max_queued=3, max_batch=2)
    for _ in range(8):
        clients(gw)  # anonymous: one `connected` each
    # At most one batch (2) in flight and 3 queued while nothing listens: 3 or more dropped.
    wait_until(lambda: gw.metric("switchboard_lifecycle_facts_dropped_total") >= 3, 10, what="drops counted")
    wait_until(lambda: "lifecycle events dropped" in gw.log_path.read_text(errors="replace"), 5, what="the drop logged")
    # The receiver comes up: what was kept arrives in order, and the id numbers show the gap.
    receiver = started.adopt(WebhookServer(keep_alive=True, port=port))
    dropped_metric = lambda: int(gw.metric("switchboard_lifecycle_facts_dropped_total"))  # noqa: E731
    wait_until(lambda: len(delivered(receiver)) + dropped_metric() == 8, 10, what="every event delivered or dropped")
    dropped = dropped_metric()
    numbers = [number(e) for e in delivered(receiver)]
    assert 3 <= dropped <= 5
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert len(set(range(1, 9)) - set(numbers)) == dropped


def test_a_graceful_stop_delivers_the_drain_events(started, clients):
    gw, hook = started()
    alice = clients(gw, headers=bearer("alice"))
    session = alice.connected_frame["session"]
    alice.subscribe("/topic/room", id="a", receipt="r")
    wait_events(hook, 4)
    assert gw.stop() == 0
    # Delivered before the process exited: no waiting here.
    assert [row(e) for e in delivered(hook)[4:]] == [
        ("disconnected", session, "alice", None, None, "drain"),
        ("destination-vacated", session, "alice", "/topic/room", None, None),
        ("user-offline", session, "alice", None, None, "drain"),
    ]


def run(*args):
    return subprocess.run([BINARY, "--port", "0", *args], capture_output=True, text=True, timeout=20, env=dict(os.environ))


@pytest.mark.parametrize("settings,message", [
    (["redis.url=redis://127.0.0.1:1", "events.enabled=true", "events.webhook.url=http://127.0.0.1:9/events"],
     "events.webhook.url is for the embedded broker: with redis.url, events go to the Redis Stream events.stream"),
    (["events.enabled=true"], "events.enabled needs redis.url (events in a Redis Stream) or events.webhook.url"),
    (["events.enabled=true", "events.webhook.url=127.0.0.1:9"], "events.webhook.url: the webhook url must be an absolute"),
])
def test_events_webhook_settings_are_checked(settings, message):
    out = run(*[arg for s in settings for arg in ("--set", s)])
    assert out.returncode != 0, f"started; stderr:\n{out.stderr}"
    assert message in out.stderr, out.stderr
