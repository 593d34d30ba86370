"""Helpers of the security tests: JWT keys and tokens (PyJWT), a raw WebSocket upgrade whose
answer is parsed, and the expected refusals.

- ``Keys``: an HS256 secret, RSA and EC P-256 key pairs, their PEM public keys on disk, and a
  JWKS file holding an RSA key with a ``kid`` (the ``keys`` fixture of tests/security).
- ``make_token(...)``: signs JWTs; ``bearer(token)``: the Authorization header.
"""
from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from support.rawws import upgrade_request as upgrade_bytes
from support.sockets import recv_until
from support.stompclient import StompClient

# At least 32 bytes: jwt-kit wants an HMAC key as long as the hash output.
HMAC_SECRET = "security-suite-hmac-secret-0123456789abcdef"

NO_TOKEN = ("authentication failed: no token (send 'Authorization: Bearer <jwt>' or passcode in CONNECT, "
            "or access_token at the handshake)")


def upgrade_request(port: int, path: str = "/stomp", headers=None, source: str | None = None, timeout=5.0):
    """A raw WebSocket upgrade; returns (status, headers dict lower-cased, body bytes);
    status None when the server closed without answering."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    data = upgrade_bytes(port, path, protocol=None, extra=extra)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        s.sendall(data)
        buf = recv_until(s)
        if not buf:
            return None, {}, b""
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status != 101:
            n = int(hdrs.get("content-length", "0"))
            while len(body) < n:
                chunk = s.recv(4096)
                if not chunk:
                    break
                body += chunk
        return status, hdrs, body
    finally:
        s.close()


def _deny(c: StompClient, command: str, headers: dict, body: str, receipt: str | None):
    """`command` must be refused with `permission denied`, then the close."""
    if receipt:
        headers["receipt"] = receipt
    c.send_frame(command, headers, body)
    f = c.expect_error(f"permission denied: {command} to {headers['destination']}")
    if receipt:
        assert f.get("receipt-id") == receipt
    return f


def deny_subscribe(c: StompClient, destination: str, id: str = "denied", receipt: str | None = "deny"):
    """SUBSCRIBE that must be refused with `permission denied`, then the close."""
    return _deny(c, "SUBSCRIBE", {"destination": destination, "id": id}, "", receipt)


def deny_send(c: StompClient, destination: str, body: str = "x", receipt: str | None = "deny"):
    return _deny(c, "SEND", {"destination": destination}, body, receipt)


def expect_healthy(c: StompClient, g, topic: str = "/topic/health", body: str | None = None):
    """The healthy subscriber `c` (subscribed to `topic`) still gets a message published via the API."""
    body = body or f"still-alive-{time.monotonic()}"
    r = g.publish(topic, body)
    assert r.status_code == 200, r.text
    m = c.expect_message()
    assert m.text == body


# -- keys and tokens ---------------------------------------------------------------------

class Keys:
    def __init__(self, d: Path):
        self.dir = d
        self.hmac = HMAC_SECRET
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_kid = "sec-suite-kid-1"
        pub = lambda k: k.public_key().public_bytes(serialization.Encoding.PEM,  # noqa: E731
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        self.rsa_pem_path = d / "rsa.pub.pem"
        self.rsa_pem_path.write_bytes(pub(self.rsa))
        self.ec_pem_path = d / "ec.pub.pem"
        self.ec_pem_path.write_bytes(pub(self.ec))
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.jwks_rsa.public_key()))
        jwk.update({"kid": self.jwks_kid, "alg": "RS256", "use": "sig"})
        self.jwks_path = d / "jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [jwk]}))


def make_token(key, alg: str = "HS256", sub: str | None = "alice", exp_in: float | None = 3600,
               headers: dict | None = None, **claims) -> str:
    now = int(time.time())
    payload = {"iat": now}
    if sub is not None:
        payload["sub"] = sub
    if exp_in is not None:
        payload["exp"] = int(now + exp_in)
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}
