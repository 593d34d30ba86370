"""Cross-instance user delivery behind haproxy: redis-server + 3 gateways (HS256 JWT) + haproxy.

User alice holds one session on each gateway, bob and an anonymous session listen too. A
message for alice (HTTP API through haproxy, the Redis broadcast route with "user", a webhook
reply with "user") reaches each alice session exactly once and nobody else."""
from __future__ import annotations

import json
import time

import pytest
import requests
import yaml

from support.cluster import Cluster, stop_cluster
from support.paths import REPO
from support.process import wait_until
from support.security import HMAC_SECRET, bearer, make_token
from support.webhook import WebhookServer


@pytest.fixture(scope="module")
def hook():
    s = WebhookServer()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(hook):
    cfg = yaml.safe_load((REPO / "examples" / "seed-streams.yaml").read_text())
    cfg.setdefault("auth", {})["jwt"] = {"hmac-secret": HMAC_SECRET}
    cfg["auth"]["allow-anonymous"] = True
    routes = cfg.setdefault("routes", {"names": []})
    routes["names"] = list(routes.get("names", [])) + ["hook"]
    routes["hook"] = {"destination": "/app/hook", "type": "webhook", "url": hook.url}
    c = Cluster("security-cluster-users", replicas=0, config_yaml=yaml.safe_dump(cfg))
    yield c
    stop_cluster(c)


@pytest.fixture
def sessions(cluster, clients):
    """alice on gw0, gw1, gw2 (direct), a second alice session and bob through haproxy, an
    anonymous session on each gateway; all subscribed to /user/queue/notes."""
    alice_tok, bob_tok = make_token(HMAC_SECRET, sub="alice"), make_token(HMAC_SECRET, sub="bob")
    out = {"alice": [], "bob": [], "anon": []}
    for i in range(3):
        a = clients(cluster.gw_ws(i), headers=bearer(alice_tok))
        assert a.connected_frame["user-name"] == "alice"
        assert Cluster.instance_of(a) == f"gw{i}"
        out["alice"].append(a)
        out["anon"].append(clients(cluster.gw_ws(i)))
    out["bob"].append(clients(cluster.lb_ws, headers=bearer(bob_tok)))
    out["bob"].append(clients(cluster.gw_ws(1), headers=bearer(bob_tok)))
    for kind in out.values():
        for c in kind:
            c.subscribe("/user/queue/notes", "n", receipt="sub")
    return out


def check_delivery(sessions, body):
    for a in sessions["alice"]:
        m = a.expect_message(timeout=5)
        assert (m["destination"], m.text, m["subscription"]) == ("/user/queue/notes", body, "n"), m.headers
    time.sleep(0.3)  # absence check: a late copy from another instance; no marker reaches every session
    for kind in ("alice", "bob", "anon"):
        for c in sessions[kind]:
            c.expect_nothing(0.05)  # exactly once per alice session, nothing for the others


def test_api_user_notification_through_haproxy(cluster, sessions):
    for n in range(3):  # round-robin: the API call lands on every instance in turn
        r = requests.post(f"{cluster.lb_url}/api/users/alice/notification",
                          json={"topic": "/queue/notes", "message": f"api note {n}"}, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == "alice"
        check_delivery(sessions, f"api note {n}")


def test_redis_broadcast_with_user(cluster, sessions):
    payload = json.dumps({"user": "alice", "topic": "/queue/notes", "message": "redis note"})
    assert cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", payload) == "3"  # every gateway listens
    check_delivery(sessions, "redis note")
    # a user-less broadcast to a /queue/ topic reaches nobody's /user/queue/
    cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", json.dumps({"topic": "/queue/notes", "message": "nobody"}))
    time.sleep(0.3)  # absence check, as in check_delivery
    for kind in sessions.values():
        for c in kind:
            c.expect_nothing(0.05)


def test_redis_broadcast_to_a_user_needs_a_user_destination(cluster, sessions, clients):
    """`{"user": "alice", "topic": "x/queue/notes"}` routed to user `alicex`'s queue: a topic
    that is not a user destination is dropped (logged), as the HTTP API refuses it."""
    alicex = clients(cluster.gw_ws(0), headers=bearer(make_token(HMAC_SECRET, sub="alicex")))
    alicex.subscribe("/user/queue/notes", "n", receipt="sub")
    for topic in ("x/queue/notes", "/topic/notes"):
        payload = json.dumps({"user": "alice", "topic": topic, "message": "misrouted"})
        assert cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", payload) == "3"
    # A marker for alicex, published after: it arrives, and nothing came before it.
    assert cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", json.dumps({"user": "alicex", "topic": "/queue/notes", "message": "marker"})) == "3"
    assert alicex.expect_message(timeout=5).text == "marker"
    for kind in sessions.values():
        for c in kind:
            c.expect_nothing(0.05)


def test_webhook_user_reply_and_anonymous_sender(cluster, sessions, clients, hook):
    hook.reply = lambda req: {"replies": [
        {"destination": "/queue/notes", "user": "alice", "body": "hook note"},
        {"destination": "/user/queue/notes", "body": "answer to the sender", "target": "sender"},
    ]}
    sender = sessions["anon"][2]
    sender.send_frame("SEND", {"destination": "/app/hook", "receipt": "q"}, "question")
    got = sender.receive_commands("MESSAGE", "RECEIPT", timeout=10)
    assert got["MESSAGE"].text == "answer to the sender"
    assert hook.bodies[-1]["user"] is None
    check_delivery(sessions, "hook note")
    # an authenticated sender on another gateway: its answer is its own, alice still once each
    bob = sessions["bob"][1]
    bob.send_frame("SEND", {"destination": "/app/hook", "receipt": "q"}, "question")
    assert bob.receive_commands("MESSAGE", "RECEIPT", timeout=10)["MESSAGE"].text == "answer to the sender"
    assert hook.bodies[-1]["user"] == "bob"
    check_delivery(sessions, "hook note")


def test_alice_session_closing_does_not_affect_the_others(cluster, sessions):
    before = requests.get(f"{cluster.gw_url(1)}/health", timeout=2).json()["sessions"]
    sessions["alice"][1].disconnect()
    sessions["alice"][1].close()
    sessions["alice"].pop(1)
    wait_until(lambda: requests.get(f"{cluster.gw_url(1)}/health", timeout=2).json()["sessions"] == before - 1,
               what="alice's session on gw1 gone")
    r = requests.post(f"{cluster.lb_url}/api/users/alice/notification",
                      json={"topic": "/queue/notes", "message": "after close"}, timeout=5)
    assert r.status_code == 200
    check_delivery(sessions, "after close")
