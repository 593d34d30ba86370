"""HTTP API keys (hashed, scoped), the WebSocket Origin allowlist and CORS on the HTTP API."""
from __future__ import annotations

import hashlib
import subprocess

import pytest
import requests

from support.paths import BINARY
from support.process import popen_retrying
from support.security import HMAC_SECRET, bearer, make_token, upgrade_request
from support.stompclient import StompClient

UNAUTHORIZED = {"error": "missing or invalid API key: send 'Authorization: Bearer <key>'", "field": "Authorization"}
KEYS = {"backend": "k-backend-7f3a", "limited": "k-limited-19cc", "notifier": "k-notifier-55aa"}


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@pytest.mark.parametrize("key", ["hello", "k-backend-7f3a", "with space and ünïcödé"])
def test_hash_api_key_prints_sha256(key):
    p = popen_retrying([BINARY, "--hash-api-key", key], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert out.decode().strip() == sha(key)


@pytest.fixture(scope="module")
def g(gw):
    return gw(f"auth.jwt.hmac-secret={HMAC_SECRET}",
              "auth.api-keys.names=backend,limited,notifier",
              f"auth.api-keys.backend.sha256={sha(KEYS['backend'])}",
              f"auth.api-keys.limited.sha256={sha(KEYS['limited']).upper()}",
              "auth.api-keys.limited.scopes=/topic/public.",
              f"auth.api-keys.notifier.sha256={sha(KEYS['notifier'])}",
              "auth.api-keys.notifier.scopes=/queue/,/topic/")


@pytest.fixture
def sub(g, clients):
    c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="alice")))
    for i, d in enumerate(("/topic/public.news", "/topic/private.x", "/user/queue/notes")):
        c.subscribe(d, str(i), receipt=f"r{i}")
    return c


def post(g, path, topic, key=None, auth=None, message="m"):
    headers = {}
    if auth is not None:
        headers["Authorization"] = auth
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(g.base + path, json={"topic": topic, "message": message}, headers=headers, timeout=5)


@pytest.mark.parametrize("path,topic", [("/api/notification", "/topic/public.news"),
                                        ("/api/users/alice/notification", "/queue/notes")])
@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {KEYS['backend']}",
                                  f"Bearer {sha(KEYS['backend'])}",
                                  f"Bearer {KEYS['backend'][:-1]}"],
                         ids=["none", "empty", "scheme-only", "scheme-space", "wrong", "basic", "the-hash",
                              "prefix"])
def test_missing_or_bad_key_is_401(g, sub, path, topic, auth):
    r = post(g, path, topic, auth=auth)
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED
    sub.expect_nothing(0.1)


@pytest.mark.parametrize("scheme", ["bearer ", "BEARER ", "Bearer  ", "Bearer\t"], ids=["lower", "upper", "two-spaces", "tab"])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_may_follow(g, sub, scheme):
    """RFC 9110 §11.1 and §11.4: the scheme is case-insensitive and one or more spaces separate
    it from the credentials."""
    r = post(g, "/api/notification", "/topic/private.x", auth=scheme + KEYS["backend"], message=f"via {scheme!r}")
    assert r.status_code == 200, r.text
    assert sub.expect_message().text == f"via {scheme!r}"


def test_valid_key_in_scope(g, sub):
    r = post(g, "/api/notification", "/topic/private.x", KEYS["backend"], message="by backend")
    assert r.status_code == 200, r.text
    assert sub.expect_message().text == "by backend"
    r = post(g, "/api/notification", "/topic/public.news", KEYS["limited"], message="by limited")
    assert r.status_code == 200, r.text  # hash configured in upper case still matches
    assert sub.expect_message().text == "by limited"
    r = post(g, "/api/users/alice/notification", "/queue/notes", KEYS["notifier"], message="to alice")
    assert r.status_code == 200, r.text
    m = sub.expect_message()
    assert (m["destination"], m.text) == ("/user/queue/notes", "to alice")


@pytest.mark.parametrize("name,path,topic", [
    ("limited", "/api/notification", "/topic/private.x"),
    ("limited", "/api/notification", "/topic/public"),
    ("limited", "/api/users/alice/notification", "/queue/notes"),
    ("backend", "/api/users/alice/notification", "/queue/notes"),  # default scopes: the broker prefixes
])
def test_key_out_of_scope_is_403(g, sub, name, path, topic):
    r = post(g, path, topic, KEYS[name])
    assert r.status_code == 403, r.text
    assert r.json() == {"error": f"API key '{name}' may not publish to {topic}", "field": "topic"}
    sub.expect_nothing(0.2)


# -- Origin allowlist ----------------------------------------------------------------------

ALLOWED = ("https://app.example", "https://admin.example")


@pytest.fixture(scope="module")
def og(gw):
    return gw("http.allowed-origins=" + ",".join(ALLOWED))


BAD_ORIGINS = ["https://evil.example", "null", "https://app.example.evil.com", "http://app.example",
               "https://app.example:8443", "https://APP.example.x"]


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_disallowed_origin_gets_no_session(og, origin, clients):
    healthy = clients(og, ws={"origin": ALLOWED[0]})
    healthy.subscribe("/topic/o", "1", receipt="r")
    status, _, _ = upgrade_request(og.port, headers={"Origin": origin})
    assert status != 101
    with pytest.raises(Exception):
        StompClient(og.ws_url, timeout=3, origin=origin)
    assert og.wait_health(lambda h: h["connections"] == 1)["connections"] == 1
    assert og.publish("/topic/o", "still here").status_code == 200
    assert healthy.expect_message().text == "still here"




@pytest.mark.parametrize("origin", BAD_ORIGINS[:2])
def test_disallowed_origin_upgrade_is_403(og, origin):
    status, headers, body = upgrade_request(og.port, headers={"Origin": origin})
    assert status == 403
    assert headers.get("content-type", "").startswith("application/json")
    import json
    assert json.loads(body) == {"error": f"origin {origin} is not allowed", "field": "Origin"}
    assert og.health()["connections"] == 0


@pytest.mark.parametrize("origin", ALLOWED)
def test_allowed_origin_upgrade_works(og, clients, origin):
    c = clients(og, ws={"origin": origin})
    c.subscribe("/topic/o", "1", receipt="r")


def test_no_origin_upgrade_works(og, clients):
    c = clients(og, ws={"suppress_origin": True})
    c.subscribe("/topic/o", "1", receipt="r")


def test_star_allows_any_origin(gw, clients):
    g = gw("http.allowed-origins=*")
    clients(g, ws={"origin": "https://anything.example"})
    assert upgrade_request(g.port, headers={"Origin": "https://x.example"})[0] == 101


def test_empty_allowlist_allows_any_origin(gw, clients):
    g = gw()
    clients(g, ws={"origin": "https://anything.example"})


def test_cors_on_api(og):
    r = requests.post(og.base + "/api/notification", json={"topic": "/topic/o", "message": "x"},
                      headers={"Origin": "https://app.example"}, timeout=5)
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    assert "Origin" in r.headers.get("Vary", "")
    r = requests.get(og.base + "/health", headers={"Origin": "https://admin.example"}, timeout=5)
    assert r.headers.get("Access-Control-Allow-Origin") == "https://admin.example"
    for origin in ("https://evil.example", None):
        r = requests.post(og.base + "/api/notification", json={"topic": "/topic/o", "message": "x"},
                          headers={"Origin": origin} if origin else {}, timeout=5)
        assert "Access-Control-Allow-Origin" not in r.headers, (origin, dict(r.headers))
        assert "Access-Control-Allow-Credentials" not in r.headers


def test_cors_preflight(og):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization"}
    r = requests.options(og.base + "/api/notification", headers={"Origin": "https://app.example", **pre}, timeout=5)
    assert r.status_code == 204
    assert r.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    assert r.headers.get("Access-Control-Allow-Methods") == "GET, POST, OPTIONS"
    assert "Origin" in r.headers.get("Vary", "")
    r = requests.options(og.base + "/api/notification", headers={"Origin": "https://evil.example", **pre}, timeout=5)
    assert r.status_code == 403
    assert r.headers.get("Content-Type", "").startswith("application/json")
    assert r.json()["error"] == "origin https://evil.example is not allowed"
    assert "Access-Control-Allow-Origin" not in r.headers
