"""The console's ``POST /api/console/redis-publish`` with API keys configured: a message on an
inbound channel (``broadcast``: ``{"topic", "message"}``) reaches any destination, so without a
key it got around the keys and their scopes (a forged message to any topic or user, from anyone
or a cross-site page). It needs a key that may publish to every broker prefix now: 401 without
one, 403 for a scoped key, and nothing is published. A message may name a user too, so a key
limited to the broker prefixes (the default scopes) is refused as well (it could send to any
user's `/user/queue/…`, which it may not through the API). A redis-server of its own."""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args

FULL_KEY = "console-full-key"
SCOPED_KEY = "console-public-only-key"
BROKER_KEY = "console-broker-only-key"

YAML = f"""
redis:
  inbound:
    names: [broadcast]
    broadcast:
      type: broadcast
      channel: BROADCAST-CHANNEL
auth:
  api-keys:
    names: [full, broker, scoped]
    full:
      sha256: {hashlib.sha256(FULL_KEY.encode()).hexdigest()}
      scopes: ["/topic/", "/queue/"]
    broker:
      sha256: {hashlib.sha256(BROKER_KEY.encode()).hexdigest()}
    scoped:
      sha256: {hashlib.sha256(SCOPED_KEY.encode()).hexdigest()}
      scopes: ["/topic/public."]
"""


@pytest.fixture(scope="module")
def redis_port():
    port = free_port()
    proc = subprocess.Popen(redis_server_args(port, Path(tempfile.mkdtemp(prefix="sb-console-publish-"))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", what="redis")
        yield port
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def g(gateway_factory, redis_port):
    gw = gateway_factory(f"redis.url=redis://127.0.0.1:{redis_port}", yaml=YAML)
    wait_until(lambda: redis_cli(redis_port, "PUBSUB", "NUMSUB", "BROADCAST-CHANNEL").splitlines()[1] != "0",
               what="the gateway's SUBSCRIBE to BROADCAST-CHANNEL")
    return gw


def publish(g, topic: str, text: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"channel": "BROADCAST-CHANNEL", "message": json.dumps({"topic": topic, "message": text})}
    return requests.post(g.base + "/api/console/redis-publish", json=body, headers=headers, timeout=5)


@pytest.mark.parametrize("key,status", [(None, 401), ("wrong-key", 401), (SCOPED_KEY, 403)],
                         ids=["no-key", "bad-key", "scoped-key"])
def test_refused_without_a_key_for_every_destination(g, clients, key, status):
    c = clients(g)
    c.subscribe("/topic/admin.secrets", "1", receipt="r1")
    r = publish(g, "/topic/admin.secrets", "forged", key)
    assert r.status_code == status, r.text
    assert r.json()["field"] == "Authorization", r.text
    # Nothing went to Redis, so nothing arrives.
    c.expect_nothing(0.5)


def test_a_key_for_every_destination_publishes(g, clients):
    c = clients(g)
    c.subscribe("/topic/admin.secrets", "1", receipt="r1")
    r = publish(g, "/topic/admin.secrets", "from the console", FULL_KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {"channel": "BROADCAST-CHANNEL", "receivers": 1}
    assert c.expect_message().text == "from the console"


def test_a_key_without_the_user_destinations_may_not_message_a_user(g, clients):
    """A key with the default scopes (the broker prefixes) may not publish to a user through the
    API (403 "may not publish to /queue/inbox"); through the console's inbound channel it could
    (a probe: a forged message reached bob's /user/queue/inbox)."""
    r = requests.post(g.base + "/api/users/bob/notification", json={"topic": "/queue/inbox", "message": "x"},
                      headers={"Authorization": f"Bearer {BROKER_KEY}"}, timeout=5)
    assert r.status_code == 403, r.text
    body = {"channel": "BROADCAST-CHANNEL",
            "message": json.dumps({"user": "bob", "topic": "/queue/inbox", "message": "forged"})}
    r = requests.post(g.base + "/api/console/redis-publish", json=body,
                      headers={"Authorization": f"Bearer {BROKER_KEY}"}, timeout=5)
    assert r.status_code == 403, r.text
    assert "may not publish to /queue/" in r.json()["error"], r.text
