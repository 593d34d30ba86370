"""JWT authentication on CONNECT: every key kind, every token place, every rejection."""
from __future__ import annotations

import json
import subprocess
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from support.paths import BINARY
from support.process import free_port, popen_retrying
from support.security import HMAC_SECRET, NO_TOKEN, b64url, bearer, deny_subscribe, expect_healthy, make_token
from support.stompclient import StompClient


def rejected(clients, g, message, headers=None, ws=None, receipt=None):
    """CONNECT must get ERROR `message` (with receipt-id when asked) and be closed."""
    c = clients(g, connect=False, ws=ws)
    h = dict(headers or {})
    if receipt:
        h["receipt"] = receipt
    frame = c.connect(headers=h, expect_connected=False)
    assert frame.command == "ERROR", f"expected ERROR, got {frame.command} {frame.headers}"
    assert frame.get("message") == message, f"{frame.get('message')!r} != {message!r}"
    if receipt:
        assert frame.get("receipt-id") == receipt
    assert "user-name" not in frame.headers
    assert c.wait_closed(5), "connection not closed after the authentication ERROR"
    return frame


def accepted(clients, g, user, headers=None, ws=None):
    c = clients(g, connect=False, ws=ws)
    frame = c.connect(headers=headers or {})
    assert frame.get("user-name") == user, frame.headers
    return c


# -- HS256 gateway, leeway 0 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def hs(gw):
    return gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "auth.jwt.leeway-seconds=0")


@pytest.fixture
def healthy(hs, clients):
    """An authenticated subscriber that must keep working whatever happens to other sessions."""
    c = clients(hs, headers=bearer(make_token(HMAC_SECRET, sub="healthy")))
    c.subscribe("/topic/health", "h", receipt="h-ok")
    yield c
    expect_healthy(c, hs)


def test_no_token_is_rejected_with_receipt_and_counted(hs, clients, healthy):
    before = hs.session_errors("auth")
    rejected(clients, hs, NO_TOKEN, receipt="r-42")
    rejected(clients, hs, NO_TOKEN, headers={"login": "alice"})  # a login without passcode is no token
    rejected(clients, hs, NO_TOKEN, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert hs.session_errors("auth") >= before + 3


def test_bearer_header(hs, clients, healthy):
    c = accepted(clients, hs, "alice", bearer(make_token(HMAC_SECRET, sub="alice")))
    c.subscribe("/topic/t.auth", "1", receipt="s")  # the session is usable
    assert hs.publish("/topic/t.auth", "hi").status_code == 200
    assert c.expect_message().text == "hi"


def test_passcode_header(hs, clients, healthy):
    accepted(clients, hs, "bob", {"login": "whoever", "passcode": make_token(HMAC_SECRET, sub="bob")})


def test_access_token_query_parameter(hs, clients, healthy):
    tok = make_token(HMAC_SECRET, sub="carol")
    c = clients(hs.ws_url + "?access_token=" + tok, connect=False)
    assert c.connect().get("user-name") == "carol"
    c2 = clients(hs.ws_url + "?foo=1&access_token=" + tok + "&bar=2", connect=False)
    assert c2.connect().get("user-name") == "carol"


def test_access_token_cookie(gw, hs, clients, healthy):
    """The handshake cookie logs in from an origin listed in http.allowed-origins, or without
    an Origin (not a browser). From a browser while any origin is allowed it is not read: a
    page of any site could open a session with a user's cookie (cross-site WebSocket hijacking)."""
    tok = make_token(HMAC_SECRET, sub="dave")
    cookie = f"theme=dark; access_token={tok}"
    listed = gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "http.allowed-origins=https://app.example")
    for ws in ({"cookie": cookie, "origin": "https://app.example"}, {"cookie": cookie, "suppress_origin": True}):
        c = clients(listed, connect=False, ws=ws)
        assert c.connect().get("user-name") == "dave", ws
    c = clients(hs, connect=False, ws={"cookie": cookie, "suppress_origin": True})
    assert c.connect().get("user-name") == "dave"
    rejected(clients, hs, NO_TOKEN, ws={"cookie": cookie, "origin": "https://evil.example"})


def test_token_place_priority(hs, clients, healthy):
    a, b, q = (make_token(HMAC_SECRET, sub=s) for s in ("alice", "bob", "quinn"))
    bad = make_token("a-completely-different-secret-of-enough-length!!", sub="mallory")
    # Authorization beats passcode, passcode beats the handshake.
    accepted(clients, hs, "alice", {"Authorization": f"Bearer {a}", "passcode": b})
    c = clients(hs.ws_url + "?access_token=" + q, connect=False)
    assert c.connect(headers={"passcode": b}).get("user-name") == "bob"
    c = clients(hs.ws_url + "?access_token=" + q, connect=False)
    assert c.connect(headers=bearer(a)).get("user-name") == "alice"
    c = clients(hs, connect=False, ws={"cookie": f"access_token={q}", "suppress_origin": True})
    assert c.connect(headers={"passcode": b}).get("user-name") == "bob"
    # A bad token in the strongest place is not rescued by a good one in a weaker place.
    rejected(clients, hs, "authentication failed: invalid signature", {"Authorization": f"Bearer {bad}", "passcode": b})
    rejected(clients, hs, "authentication failed: invalid signature", {"passcode": bad},
             ws={"cookie": f"access_token={q}", "suppress_origin": True})


def test_expired_token(hs, clients, healthy):
    rejected(clients, hs, "authentication failed: token expired", bearer(make_token(HMAC_SECRET, exp_in=-5)),
             receipt="exp")


def test_not_yet_valid_token(hs, clients, healthy):
    tok = make_token(HMAC_SECRET, nbf=int(time.time()) + 3600)
    rejected(clients, hs, "authentication failed: token not yet valid", bearer(tok))


def test_invalid_signature(hs, clients, healthy):
    tok = make_token("another-secret-that-is-long-enough-for-hs256!", sub="alice")
    rejected(clients, hs, "authentication failed: invalid signature", bearer(tok))
    # A valid token whose payload was edited (sub changed) keeps the old signature.
    good = make_token(HMAC_SECRET, sub="alice")
    h, p, s = good.split(".")
    payload = json.loads(jwt.utils.base64url_decode(p))
    payload["sub"] = "admin"
    forged = ".".join([h, b64url(json.dumps(payload).encode()), s])
    rejected(clients, hs, "authentication failed: invalid signature", bearer(forged))


def signed_hs256(header: dict, payload_bytes: bytes, secret: str = HMAC_SECRET) -> str:
    import hmac, hashlib  # noqa: E401
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload_bytes)}"
    return signing_input + "." + b64url(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize("tok", ["not-a-jwt", "a.b.c", "....", "x" * 300, "only.two",
                                 signed_hs256({"alg": "HS256", "typ": "JWT"}, b"this is not json"),
                                 signed_hs256({"alg": "HS256", "typ": "JWT"}, b'["a", "list"]')],
                         ids=["word", "abc", "dots", "long", "two-parts", "payload-not-json", "payload-not-object"])
def test_malformed_token(hs, clients, healthy, tok):
    rejected(clients, hs, "authentication failed: malformed token", bearer(tok))


def test_missing_sub(hs, clients, healthy):
    rejected(clients, hs, "authentication failed: missing sub claim", bearer(make_token(HMAC_SECRET, sub=None)))
    rejected(clients, hs, "authentication failed: missing sub claim", bearer(make_token(HMAC_SECRET, sub="")))


def test_alg_none_is_rejected(hs, clients, healthy):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "admin", "exp": int(time.time()) + 3600}).encode())
    for tok in (f"{header}.{payload}.", f"{header}.{payload}.{b64url(b'x')}"):
        frame = rejected_any(clients, hs, bearer(tok))
        assert frame.get("message", "").startswith("authentication failed: ")


def test_asymmetric_token_on_hmac_gateway_is_rejected(hs, clients, healthy, keys):
    frame = rejected_any(clients, hs, bearer(make_token(keys.rsa, "RS256")))
    assert frame.get("message", "").startswith("authentication failed: ")


def rejected_any(clients, g, headers, ws=None):
    c = clients(g, connect=False, ws=ws)
    frame = c.connect(headers=headers, expect_connected=False)
    assert frame.command == "ERROR", f"expected ERROR, got {frame.command} {frame.headers}"
    assert "user-name" not in frame.headers
    assert c.wait_closed(5)
    return frame


def test_session_closed_when_token_expires(hs, clients, healthy):
    exp = int(time.time()) + 2
    c = accepted(clients, hs, "shortlived", bearer(make_token(HMAC_SECRET, sub="shortlived", exp_in=None, exp=exp)))
    c.subscribe("/topic/t.expiry", "1", receipt="s")
    frame = c.receive(timeout=6)
    assert frame.command == "ERROR", frame.headers
    assert frame.get("message") == "authentication expired: the token's exp has passed"
    assert time.time() >= exp - 0.05, "closed before exp"
    assert time.time() - exp < 2.5, f"closed {time.time() - exp:.2f}s after exp"
    assert c.wait_closed(5)
    # A long-lived session of the same kind is still there.
    other = accepted(clients, hs, "longlived", bearer(make_token(HMAC_SECRET, sub="longlived")))
    other.subscribe("/topic/t.expiry", "1", receipt="s")


def test_short_hmac_secret_does_not_crash():
    """A secret shorter than 32 bytes: the gateway must either start and serve, or refuse the
    setting with a message naming it and a normal exit status; it must not die on a signal."""
    port = free_port()
    p = popen_retrying([BINARY, "--host", "127.0.0.1", "--port", str(port), "--set", "auth.jwt.hmac-secret=s3cret"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    # Started: it must also verify a token made with that secret.
                    with StompClient(f"ws://127.0.0.1:{port}/stomp") as c:
                        f = c.connect(headers=bearer(make_token("s3cret", sub="short")), expect_connected=False)
                        assert f.get("user-name") == "short", f.headers
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)  # poll interval
        code = p.wait(timeout=20)
        out = p.stdout.read().decode(errors="replace")
        assert 0 < code < 128, f"switchboard died with exit status {code}: {out[:300]}"
        assert "hmac-secret" in out, out[:400]
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


# -- RS256 / ES256 PEM files, JWKS ------------------------------------------------------------

@pytest.fixture(scope="module")
def rs(gw, keys):
    return gw(f"auth.jwt.public-key-files={keys.rsa_pem_path}", "auth.handshake-cookie=sbtok")


@pytest.fixture(scope="module")
def es(gw, keys):
    return gw(f"auth.jwt.public-key-files={keys.ec_pem_path}")


@pytest.fixture(scope="module")
def jwks(gw, keys):
    return gw(f"auth.jwt.jwks-file={keys.jwks_path}")


def test_rs256_pem(rs, clients, keys):
    tok = make_token(keys.rsa, "RS256", sub="rita")
    accepted(clients, rs, "rita", bearer(tok))
    accepted(clients, rs, "rita", {"passcode": tok})
    c = clients(rs.ws_url + "?access_token=" + tok, connect=False)
    assert c.connect().get("user-name") == "rita"
    rejected(clients, rs, "authentication failed: invalid signature", bearer(make_token(keys.other_rsa, "RS256")))
    rejected(clients, rs, "authentication failed: token expired", bearer(make_token(keys.rsa, "RS256", exp_in=-120)))
    rejected(clients, rs, NO_TOKEN)


def test_configured_handshake_cookie_name(rs, clients, keys):
    tok = make_token(keys.rsa, "RS256", sub="cookie-user")
    c = clients(rs, connect=False, ws={"cookie": f"sbtok={tok}", "suppress_origin": True})
    assert c.connect().get("user-name") == "cookie-user"
    rejected(clients, rs, NO_TOKEN, ws={"cookie": f"access_token={tok}", "suppress_origin": True})


def test_rs256_algorithm_confusion_is_rejected(rs, clients, keys):
    """HS256 signed with the RSA public key's PEM as the HMAC secret (the classic confusion)."""
    import hmac, hashlib  # noqa: E401
    pem = keys.rsa_pem_path.read_bytes()
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "admin", "exp": int(time.time()) + 3600}).encode())
    sig = b64url(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    frame = rejected_any(clients, rs, bearer(f"{header}.{payload}.{sig}"))
    assert frame.get("message", "").startswith("authentication failed: ")
    frame = rejected_any(clients, rs, bearer(make_token(keys.ec, "ES256")))
    assert frame.get("message", "").startswith("authentication failed: ")


def test_es256_pem(es, clients, keys):
    accepted(clients, es, "erin", bearer(make_token(keys.ec, "ES256", sub="erin")))
    other = ec.generate_private_key(ec.SECP256R1())
    rejected(clients, es, "authentication failed: invalid signature", bearer(make_token(other, "ES256")))
    frame = rejected_any(clients, es, bearer(make_token(keys.rsa, "RS256")))
    assert frame.get("message", "").startswith("authentication failed: ")


def test_jwks_file(jwks, clients, keys):
    kid = {"kid": keys.jwks_kid}
    accepted(clients, jwks, "jay", bearer(make_token(keys.jwks_rsa, "RS256", sub="jay", headers=kid)))
    rejected(clients, jwks, "authentication failed: invalid signature",
             bearer(make_token(keys.other_rsa, "RS256", headers=kid)))
    rejected(clients, jwks, NO_TOKEN)


def test_jwks_unknown_kid(jwks, clients, keys):
    rejected(clients, jwks, "authentication failed: no key for this token",
             bearer(make_token(keys.other_rsa, "RS256", headers={"kid": "unknown-kid"})))
    rejected(clients, jwks, "authentication failed: no key for this token",
             bearer(make_token(keys.jwks_rsa, "RS256", headers={"kid": "unknown-kid"})))


@pytest.mark.parametrize("combo", ["rsa+ec", "ec+rsa", "hmac+rsa"])
def test_several_keys_all_verify(gw, clients, keys, combo):
    """auth.jwt.public-key-files is a list and keys combine: every configured key verifies its tokens."""
    sets = {"rsa+ec": [f"auth.jwt.public-key-files={keys.rsa_pem_path},{keys.ec_pem_path}"],
            "ec+rsa": [f"auth.jwt.public-key-files={keys.ec_pem_path},{keys.rsa_pem_path}"],
            "hmac+rsa": [f"auth.jwt.hmac-secret={HMAC_SECRET}", f"auth.jwt.public-key-files={keys.rsa_pem_path}"]}[combo]
    g = gw(*sets)
    tokens = {"rsa": make_token(keys.rsa, "RS256", sub="rsa-user"), "ec": make_token(keys.ec, "ES256", sub="ec-user"),
              "hmac": make_token(HMAC_SECRET, sub="hmac-user")}
    for kind in combo.split("+"):
        accepted(clients, g, f"{kind}-user", bearer(tokens[kind]))


# -- audience / issuer, anonymous, kept claims -------------------------------------------------

def test_audience_and_issuer(gw, clients):
    g = gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "auth.jwt.audience=switchboard",
           "auth.jwt.issuer=https://issuer.example")
    iss = "https://issuer.example"
    accepted(clients, g, "ann", bearer(make_token(HMAC_SECRET, sub="ann", aud="switchboard", iss=iss)))
    accepted(clients, g, "ann", bearer(make_token(HMAC_SECRET, sub="ann", aud=["other", "switchboard"], iss=iss)))
    rejected(clients, g, "authentication failed: token audience does not include switchboard",
             bearer(make_token(HMAC_SECRET, iss=iss)))
    rejected(clients, g, "authentication failed: token audience does not include switchboard",
             bearer(make_token(HMAC_SECRET, aud=["other"], iss=iss)))
    rejected(clients, g, "authentication failed: token issuer is not https://issuer.example",
             bearer(make_token(HMAC_SECRET, aud="switchboard", iss="https://evil.example")))
    rejected(clients, g, "authentication failed: token issuer is not https://issuer.example",
             bearer(make_token(HMAC_SECRET, aud="switchboard")))


def test_allow_anonymous(gw, clients):
    g = gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "auth.allow-anonymous=true")
    c = clients(g)
    assert "user-name" not in c.connected_frame.headers
    accepted(clients, g, "alice", bearer(make_token(HMAC_SECRET)))
    # A bad token is still refused: it does not fall back to anonymous.
    rejected(clients, g, "authentication failed: invalid signature",
             bearer(make_token("yet-another-secret-that-is-long-enough!!")))
    rejected(clients, g, "authentication failed: token expired", bearer(make_token(HMAC_SECRET, exp_in=-100)))


def test_no_keys_means_anonymous(gw, clients):
    g = gw()
    c = clients(g)
    assert "user-name" not in c.connected_frame.headers


KEPT_CLAIMS_YAML = f"""
auth:
  jwt:
    hmac-secret: "{HMAC_SECRET}"
    claims: [tenant, roles]
  rules:
    subscribe: ["/topic/tenant.{{tenant}}.**", "/topic/ops.** if roles=ops,admin"]
"""


def test_kept_claims_drive_rules(gw, clients):
    g = gw(yaml=KEPT_CLAIMS_YAML)
    acme = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="u1", tenant="acme", roles=["viewer"])))
    acme.subscribe("/topic/tenant.acme.news", "1", receipt="ok")
    assert g.publish("/topic/tenant.acme.news", "for acme").status_code == 200
    assert acme.expect_message().text == "for acme"
    deny_subscribe(acme, "/topic/tenant.globex.news")
    # roles as a list and as a single string; a claim that is not in the token allows nothing.
    ops = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="u2", roles=["x", "ops"])))
    ops.subscribe("/topic/ops.alerts", "1", receipt="ok")
    adm = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="u3", roles="admin")))
    adm.subscribe("/topic/ops.alerts", "1", receipt="ok")
    notenant = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="u4", roles=["ops"])))
    deny_subscribe(notenant, "/topic/tenant.acme.news")
    viewer = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="u5", tenant="acme", roles=["viewer"])))
    deny_subscribe(viewer, "/topic/ops.alerts")


def test_a_jwks_key_without_alg_is_not_taken_over_by_a_forged_header(gw, clients, keys, tmp_path):
    """A token's `alg` must be one of the keys': a JWKS key without `alg` gets the one its type
    means (RS256 for RSA), so a forged header cannot choose another for it (jwt-kit builds a
    key's signer from the first token's header when the key has none, and keeps it; with
    jwt-kit 5.8 a forged RS384 token was refused as "invalid signature", and nothing kept: the
    refusal now names the reason, and no longer depends on that)."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.jwks_rsa.public_key()))
    jwk.update({"kid": keys.jwks_kid, "use": "sig"})
    jwk.pop("alg", None)
    # An encryption key never verifies a token (nor adds its algorithm to the accepted ones).
    enc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.other_rsa.public_key()))
    enc.update({"kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"})
    path = tmp_path / "jwks-no-alg.json"
    path.write_text(json.dumps({"keys": [jwk, enc]}))
    g = gw(f"auth.jwt.jwks-file={path}")
    accepted(clients, g, "jay", bearer(make_token(keys.jwks_rsa, "RS256", sub="jay", headers={"kid": keys.jwks_kid})))
    forged = make_token(keys.jwks_rsa, "RS384", sub="mallory")
    rejected(clients, g, "authentication failed: unsupported algorithm: the keys are for RS256", bearer(forged))
    rejected(clients, g, "authentication failed: unsupported algorithm: the keys are for RS256",
             bearer(make_token(keys.jwks_rsa, "PS256", sub="mallory")))
    # The genuine tokens, with and without the kid, still pass.
    accepted(clients, g, "jay", bearer(make_token(keys.jwks_rsa, "RS256", sub="jay", headers={"kid": keys.jwks_kid})))
    accepted(clients, g, "kay", bearer(make_token(keys.jwks_rsa, "RS256", sub="kay")))
