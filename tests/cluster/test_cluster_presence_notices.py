"""Opt-in join/leave notices (``x-presence: true`` on SUBSCRIBE) with real processes: 3
gateways, redis-server, events on, and ``auth.rules.presence``. A watcher on one gateway is
told when sessions on the others join and leave its destination (subscribe, unsubscribe,
disconnect, a closed socket, a ``kill -9`` reaped as ``node-lost``); a subscriber without the
header is told nothing; presence where the rules do not allow it is an ERROR."""
from __future__ import annotations

import json
import time

import jwt
import pytest
import requests

from support.cluster import Cluster, stop_cluster
from support.process import wait_until
from support.stompclient import Frame, StompClient

SECRET = "presence-notices-hmac-secret-0123456789abcdef"
LEASE_TTL_MS = 2000

CONFIG = f"""
events:
  enabled: true
  lease-ttl-ms: {LEASE_TTL_MS}
  lease-renew-ms: 500
auth:
  allow-anonymous: true
  jwt:
    hmac-secret: {SECRET}
  rules:
    presence: ["/topic/room.*", "/topic/private.{{sub}}"]
"""

WATCH = {"x-presence": "true"}


def token(user: str) -> str:
    return jwt.encode({"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def connect(url: str, user: str | None) -> StompClient:
    c = StompClient(url, timeout=10)
    c.connect(headers={"Authorization": f"Bearer {token(user)}"} if user else None)
    return c


def session_of(c: StompClient) -> str:
    return c.connected_frame["session"]


def expect_notice(watcher: StompClient, event: str, of: StompClient, user: str | None, timeout=10.0, **body) -> Frame:
    """The watcher's next frame is the notice `event` of `of`'s session."""
    frame = watcher.expect_message(timeout=timeout)
    assert frame.get("x-presence-event") == event, frame.headers
    assert frame.get("x-presence-session") == session_of(of), frame.headers
    assert frame.get("x-presence-user") == user, frame.headers
    assert frame.get("content-type") == "application/json"
    payload = json.loads(frame.text)
    assert payload["event"] == event and payload["session"] == session_of(of) and payload.get("user") == user
    for k, v in body.items():
        assert payload.get(k) == v, (k, payload)
    return frame


@pytest.fixture(scope="module")
def cluster():
    c = Cluster("presence-notices", replicas=0, config_yaml=CONFIG)
    yield c
    stop_cluster(c)


def test_a_watcher_sees_joins_and_leaves_on_other_gateways_and_a_plain_subscriber_sees_none(cluster):
    room = "/topic/room.lobby"
    watcher = connect(cluster.gw_ws(0), "wendy")
    watcher.subscribe(room, id="w", receipt="w", **WATCH)
    plain = connect(cluster.gw_ws(0), "paul")
    plain.subscribe(room, id="p", receipt="p")
    # The plain subscriber joined after the watcher's receipt: the watcher hears of it.
    expect_notice(watcher, "join", plain, "paul", instance="gw0", destination=room)

    bob = connect(cluster.gw_ws(1), "bob")
    bob.subscribe(room, id="b", receipt="b")
    join = expect_notice(watcher, "join", bob, "bob", instance="gw1", destination=room)
    assert join["destination"] == room and join["subscription"] == "w"
    # A second subscription of the same session is no second join; its last one's end is the leave.
    bob.subscribe(room, id="b2", receipt="b2")
    bob.unsubscribe("b", receipt="u")
    bob.unsubscribe("b2", receipt="u2")
    expect_notice(watcher, "leave", bob, "bob", reason="unsubscribe")

    anon = connect(cluster.gw_ws(2), None)
    anon.subscribe(room, id="a", receipt="a")
    expect_notice(watcher, "join", anon, None, instance="gw2")
    anon.disconnect()
    anon.close()
    expect_notice(watcher, "leave", anon, None, reason="client")

    carol = connect(cluster.gw_ws(1), "carol")
    carol.subscribe(room, id="c", receipt="c")
    expect_notice(watcher, "join", carol, "carol")
    carol.close()  # the socket, without DISCONNECT
    expect_notice(watcher, "leave", carol, "carol", reason="client")

    # Another destination's joins are not this watcher's business.
    other = connect(cluster.gw_ws(1), "olga")
    other.subscribe("/topic/room.other", id="o", receipt="o")
    # Ordinary messages still reach both subscribers, and a publisher cannot forge a notice
    # (the x-presence-* headers are the server's); the plain subscriber's first MESSAGE is
    # that one: it was told of no join or leave.
    r = requests.post(f"{cluster.gw_url(1)}/api/notification", timeout=5, json={
        "topic": room, "message": "hello", "headers": {"x-presence-event": "join", "x-presence-session": "forged"}})
    assert r.ok, r.text
    for c in (watcher, plain):
        m = c.expect_message(timeout=10)
        assert m.text == "hello" and m.get("x-presence-event") is None, m.headers
    for c in (watcher, plain, bob, other):
        c.close()


def test_a_killed_gateways_subscribers_leave_as_node_lost(cluster_factory):
    cluster = cluster_factory(replicas=0, config_yaml=CONFIG)
    room = "/topic/room.kill"
    watcher = connect(cluster.gw_ws(0), "wendy")
    watcher.subscribe(room, id="w", receipt="w", **WATCH)
    doomed = connect(cluster.gw_ws(2), "dora")
    doomed.subscribe(room, id="d", receipt="d")
    expect_notice(watcher, "join", doomed, "dora", instance="gw2")
    cluster.kill_gateway(2)
    # Reaped once the lease expired (2 s) and a survivor claimed it.
    expect_notice(watcher, "leave", doomed, "dora", timeout=LEASE_TTL_MS / 1000 + 15, reason="node-lost", instance="gw2")
    watcher.close()


def test_presence_is_refused_where_the_rules_do_not_allow_it(cluster):
    cases = [
        ({"destination": "/topic/secret", **WATCH}, "alice",
         "permission denied: presence is not allowed for /topic/secret (no auth.rules.presence rule allows it)"),
        ({"destination": "/topic/private.bob", **WATCH}, "alice",
         "permission denied: presence is not allowed for /topic/private.bob (no auth.rules.presence rule allows it)"),
        ({"destination": "/topic/private.alice", **WATCH}, None,
         "permission denied: presence is not allowed for /topic/private.alice (no auth.rules.presence rule allows it)"),
        ({"destination": "/topic/room.*", **WATCH}, "alice",
         "x-presence needs one destination, not the pattern '/topic/room.*' (presence is kept per destination)"),
        ({"destination": "/topic/room.lobby", "x-presence": "yes"}, "alice", "invalid x-presence 'yes': expected true or false"),
        ({"destination": "/user/queue/inbox", **WATCH}, "alice",
         "x-presence is not available on user destination /user/queue/inbox: presence is for broker destinations"),
    ]
    for headers, user, message in cases:
        c = connect(cluster.gw_ws(1), user)
        c.send_frame("SUBSCRIBE", {"id": "x", "receipt": "no", **headers})
        err = c.expect_error(message)
        assert err["receipt-id"] == "no"
        c.close()
    # The placeholder lets alice watch her own private destination.
    alice = connect(cluster.gw_ws(1), "alice")
    alice.subscribe("/topic/private.alice", id="mine", receipt="ok", **WATCH)
    alice.close()
