"""Bad input to presence: ``GET /api/presence/<destination>`` and ``GET /api/users/<user>/presence``
with unknown, malformed or forbidden destinations get a 4xx JSON naming the field, and
``x-presence`` on SUBSCRIBE where it cannot be served gets an ERROR. One gateway in Redis mode
with events on and API keys (a redis-server of its own), and one embedded gateway."""
from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args

READER_KEY = "presence-reader-key"
PUBLIC_KEY = "public-only-key"

YAML = f"""
events:
  enabled: true
auth:
  rules:
    presence: ["/topic/public.*"]
  api-keys:
    names: [reader, public]
    reader:
      sha256: {hashlib.sha256(READER_KEY.encode()).hexdigest()}
      scopes: ["/topic/", "/user/"]
    public:
      sha256: {hashlib.sha256(PUBLIC_KEY.encode()).hexdigest()}
      scopes: ["/topic/public."]
"""


@pytest.fixture(scope="module")
def redis_port():
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="sb-presence-api-"))
    proc = subprocess.Popen(redis_server_args(port, directory), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", what="redis")
        yield port
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def redis_gateway(gateway_factory, redis_port):
    return gateway_factory(f"redis.url=redis://127.0.0.1:{redis_port}", yaml=YAML)


def get(gw, path: str, key: str | None = READER_KEY):
    """GET `path` sent byte for byte (no client-side re-quoting); (status, JSON, content-type)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        if key:
            conn.putheader("Authorization", f"Bearer {key}")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body else None, r.getheader("Content-Type")
    finally:
        conn.close()


BAD = [
    # (id, path, key, status, field, words in the error)
    ("no-key", "/api/presence/topic/room", None, 401, "Authorization", "key"),
    ("wrong-key", "/api/presence/topic/room", "nope", 401, "Authorization", "key"),
    ("missing", "/api/presence/", READER_KEY, 400, "destination", "missing destination"),
    ("missing-bare", "/api/presence", READER_KEY, 400, "destination", "missing destination"),
    ("queue", "/api/presence/queue/x", READER_KEY, 400, "destination", "/queue/x is not a broker destination"),
    ("app", "/api/presence/app/greet", READER_KEY, 400, "destination", "/app/greet is not a broker destination"),
    ("user-destination", "/api/presence/user/queue/x", READER_KEY, 400, "destination", "not a broker destination"),
    ("routing-space", "/api/presence/~presence/topic/x", READER_KEY, 400, "destination", "not a broker destination"),
    ("bad-wildcard", "/api/presence/topic/a*b", READER_KEY, 400, "destination", "invalid destination /topic/a*b"),
    ("bad-percent", "/api/presence/topic/%ZZ", READER_KEY, 400, "destination", "percent-encoding"),
    ("control-char", "/api/presence/topic/a%01b", READER_KEY, 400, "destination", "control characters"),
    ("too-long", "/api/presence/topic/" + "x" * 1100, READER_KEY, 400, "destination", "at most 1024 bytes"),
    ("out-of-scope", "/api/presence/topic/private.x", PUBLIC_KEY, 403, "destination", "may not read /topic/private.x"),
    ("user-out-of-scope", "/api/users/alice/presence", PUBLIC_KEY, 403, "user", "may not read the presence of users"),
    ("user-control-char", "/api/users/a%0Ab/presence", READER_KEY, 400, "user", "control characters"),
]


@pytest.mark.parametrize("path,key,status,field,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_presence_requests_get_4xx_json_naming_the_field(redis_gateway, path, key, status, field, words):
    got, body, content_type = get(redis_gateway, path, key)
    assert got == status, body
    assert content_type.startswith("application/json")
    assert body["field"] == field, body
    assert words in body["error"], body


def test_good_requests_still_answer(redis_gateway, clients):
    c = clients(redis_gateway)
    c.subscribe("/topic/public.room", id="s", receipt="r")
    status, body, _ = get(redis_gateway, "/api/presence/topic/public.room", PUBLIC_KEY)
    assert status == 200
    # The subscription is recorded by the session's event loop shortly after its receipt.
    wait_until(lambda: get(redis_gateway, "/api/presence/%2Ftopic%2Fpublic.room")[1]["subscribers"] == 1, what="the subscriber")
    # A destination nobody subscribed to is no error: nobody is there.
    assert get(redis_gateway, "/api/presence/topic/public.empty")[:2] == (
        200, {"destination": "/topic/public.empty", "subscribers": 0, "users": []})
    assert get(redis_gateway, "/api/users/nobody/presence")[:2] == (200, {"user": "nobody", "online": False, "instances": {}})


def test_x_presence_where_the_rules_do_not_allow_it_is_an_error(redis_gateway, clients):
    c = clients(redis_gateway)
    c.send_frame("SUBSCRIBE", {"id": "1", "destination": "/topic/private.x", "x-presence": "true", "receipt": "r"})
    err = c.expect_error("permission denied: presence is not allowed for /topic/private.x (no auth.rules.presence rule allows it)")
    assert err["receipt-id"] == "r"
    ok = clients(redis_gateway)
    ok.subscribe("/topic/public.room", id="1", receipt="r", **{"x-presence": "true"})


def test_embedded_mode_has_no_presence(gateway_factory, clients):
    gw = gateway_factory(yaml='auth:\n  rules:\n    presence: ["/topic/**"]\n')
    c = clients(gw)
    c.send_frame("SUBSCRIBE", {"id": "1", "destination": "/topic/room", "x-presence": "true"})
    c.expect_error("x-presence is not available: join/leave notices need redis.url and events.enabled")
    status, body, _ = get(gw, "/api/presence/topic/room", None)
    assert status == 404 and "events.enabled" in body["error"], body
