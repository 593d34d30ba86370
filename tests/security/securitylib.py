"""Fixtures for the Switchboard security tests (real processes).

- ``gw`` (module scope factory): starts ``switchboard`` with ``--set`` args and/or YAML text,
  waits for ``/health``; on teardown SIGTERM and a clean exit (0) is asserted.
- ``keys`` (session scope): an HS256 secret, RSA and EC P-256 key pairs, their PEM public
  keys on disk, and a JWKS file holding an RSA key with a ``kid``.
- ``token(...)``: signs JWTs with PyJWT.
- ``clients``: tracks StompClients and closes them after the test.
- ``SecurityCluster``: redis-server + 3 gateways + haproxy (adapted from tests/cluster/clusterlib.py).
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from stompclient import ConnectionClosed, StompClient, encode_frame  # noqa: E402,F401
import gatewayproc  # noqa: E402
from gatewayproc import free_port, wait_until  # noqa: E402,F401

ARTIFACTS = REPO / "test-artifacts"
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / ".build" / "debug" / "switchboard"))

# At least 32 bytes: jwt-kit wants an HMAC key as long as the hash output.
HMAC_SECRET = "security-suite-hmac-secret-0123456789abcdef"

NO_TOKEN = ("authentication failed: no token (send 'Authorization: Bearer <jwt>' or passcode in CONNECT, "
            "or access_token at the handshake)")



def metric(base_url: str, kind: str) -> float:
    text = requests.get(base_url + "/metrics", timeout=3).text
    m = re.search(r'^switchboard_session_errors_total\{kind="%s"\} (\S+)$' % re.escape(kind), text, re.M)
    assert m, f"no switchboard_session_errors_total{{kind={kind!r}}} in /metrics"
    return float(m.group(1))


def upgrade_request(port: int, path: str = "/stomp", headers=None, source: str | None = None, timeout=5.0):
    """A raw WebSocket upgrade; returns (status, headers dict lower-cased, body bytes);
    status None when the server closed without answering."""
    req = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    for k, v in (headers or {}).items():
        req.append(f"{k}: {v}")
    data = ("\r\n".join(req) + "\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
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


def popen_retrying(args, **kw) -> subprocess.Popen:
    """Popen, retried while the binary is being rewritten by a concurrent build (ETXTBSY)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return subprocess.Popen(args, **kw)
        except OSError as exc:
            if exc.errno != 26 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def deny_subscribe(c: StompClient, destination: str, id: str = "denied", receipt: str | None = "deny"):
    """SUBSCRIBE that must be refused with `permission denied`, then the close."""
    h = {"destination": destination, "id": id}
    if receipt:
        h["receipt"] = receipt
    c.send_frame("SUBSCRIBE", h)
    f = c.expect_error(f"permission denied: SUBSCRIBE to {destination}")
    if receipt:
        assert f.get("receipt-id") == receipt
    return f


def deny_send(c: StompClient, destination: str, body: str = "x", receipt: str | None = "deny"):
    h = {"destination": destination}
    if receipt:
        h["receipt"] = receipt
    c.send_frame("SEND", h, body)
    f = c.expect_error(f"permission denied: SEND to {destination}")
    if receipt:
        assert f.get("receipt-id") == receipt
    return f


class Gateway(gatewayproc.Gateway):
    """The shared gateway process, plus user-destination publishing, API-key headers and metrics."""
    startup_timeout = 20.0

    def popen(self, args, **kw) -> subprocess.Popen:
        return popen_retrying(args, **kw)

    def publish(self, topic: str, message: str, headers=None, **extra) -> requests.Response:
        return requests.post(self.base + "/api/notification", json={"topic": topic, "message": message, **extra},
                             headers=headers or {}, timeout=5)

    def publish_user(self, user: str, topic: str, message: str, headers=None) -> requests.Response:
        return requests.post(f"{self.base}/api/users/{user}/notification", json={"topic": topic, "message": message},
                             headers=headers or {}, timeout=5)

    def metric(self, kind: str) -> float:
        return metric(self.base, kind)


@pytest.fixture(scope="module")
def gw(request):
    """gw(*sets, yaml=None) -> a started Gateway (stopped at the end of the module)."""
    started: list[Gateway] = []
    module = request.module.__name__.rsplit(".", 1)[-1]

    def start(*sets: str, yaml: str | None = None) -> Gateway:
        g = Gateway(sets, yaml, name=f"security-{module}-{len(started)}")
        started.append(g)
        return g

    yield start
    failures = []
    for g in started:
        already_exited = g.proc.poll() is not None
        code = g.stop()
        if not already_exited and code != 0:
            failures.append(f"{g.name} exited {code} after SIGTERM; see {g.log_path}")
    assert not failures, failures


@pytest.fixture
def clients():
    """clients(url_or_gateway, connect=True, **connect_kw) -> StompClient; closed after the test."""
    made: list[StompClient] = []

    def make(target, connect: bool = True, ws: dict | None = None, **connect_kw) -> StompClient:
        """`target`: a Gateway or a ws:// URL."""
        url = target if isinstance(target, str) else target.ws_url
        c = StompClient(url, timeout=10, **(ws or {}))
        made.append(c)
        if connect:
            c.connect(**connect_kw)
        return c

    yield make
    for c in made:
        c.close()


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


@pytest.fixture(scope="session")
def keys():
    return Keys(Path(tempfile.mkdtemp(prefix="sb-security-keys-")))


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


def expect_healthy(c: StompClient, g: "Gateway", topic: str = "/topic/health", body: str | None = None):
    """The healthy subscriber `c` (subscribed to `topic`) still gets a message published via the API."""
    body = body or f"still-alive-{time.monotonic()}"
    r = g.publish(topic, body)
    assert r.status_code == 200, r.text
    m = c.expect_message()
    assert m.text == body


# -- webhook --------------------------------------------------------------------------------

class WebhookServer:
    """Records POSTed JSON; replies with `reply` (dict or callable(request_json) -> dict)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                server.requests.append(body)
                reply = server.reply(body) if callable(server.reply) else server.reply
                data = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def webhook():
    s = WebhookServer()
    yield s
    s.stop()


# -- cluster (adapted from tests/cluster/clusterlib.py) ---------------------------------------

class SecurityCluster(gatewayproc.ProcessCluster):
    """redis-server, `gateways` switchboard instances (ids gw0..gwN-1) and haproxy."""

    def __init__(self, name: str, config_yaml: str, gateways: int = 3):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"sb-{name}-"))
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob(f"{name}-*.log"):
            old.unlink()
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.gw_ports = [free_port() for _ in range(gateways)]
        self.lb_port = free_port()
        self.config = self.dir / "switchboard.yaml"
        self.config.write_text(config_yaml)
        try:
            self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                  "--dir", str(self.dir), "--save", "", "--appendonly", "no"])
            wait_until(lambda: self.redis_cli("PING") == "PONG", what="redis")
            for i in range(gateways):
                self._spawn(f"gw{i}", [BINARY, "--config", str(self.config), "--host", "127.0.0.1",
                                       "--port", str(self.gw_ports[i]),
                                       "--set", f"redis.url=redis://127.0.0.1:{self.redis_port}",
                                       "--set", f"instance.id=gw{i}", "--set", "server.shutdown-grace-ms=2000"])
            for i in range(gateways):
                wait_until(lambda: requests.get(f"{self.gw_url(i)}/health/ready", timeout=1).status_code == 200,
                           20, what=f"gw{i} ready")
            self._start_haproxy()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, key, args):
        log = open(ARTIFACTS / f"{self.name}-{key}.log", "ab")
        self.procs[key] = popen_retrying(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        return self.procs[key]

    def _start_haproxy(self):
        cfg = (REPO / "examples" / "haproxy.cfg").read_text().replace("@LISTEN_PORT@", str(self.lb_port))
        for i, port in enumerate(self.gw_ports):
            cfg = cfg.replace(f"@GATEWAY_{i + 1}@", str(port))
        for i in range(len(self.gw_ports), 3):
            cfg = "\n".join(l for l in cfg.splitlines() if f"@GATEWAY_{i + 1}@" not in l) + "\n"
        path = self.dir / "haproxy.cfg"
        path.write_text(cfg)
        self._spawn("haproxy", ["haproxy", "-f", str(path)])
        wait_until(lambda: requests.get(f"{self.lb_url}/health", timeout=1).status_code == 200, what="haproxy")

    def redis_cli(self, *args, timeout=5) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port), *args], capture_output=True, text=True,
                             timeout=timeout)
        return out.stdout.strip()


    @staticmethod
    def instance_of(client: StompClient) -> str:
        return client.connected_frame["session"].split("-s-")[0]
