"""TLS: with http.tls.certificate-file and http.tls.key-file the port speaks https:// and
wss:// only (swift-nio-ssl)."""
import datetime
import ipaddress
import signal
import subprocess
import ssl

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.paths import BINARY
from support.process import free_port, wait_until
from support.stompclient import StompClient

urllib3.disable_warnings()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def test_https_and_wss(tls_files):
    cert, key = tls_files
    port = free_port()
    proc = subprocess.Popen([BINARY, "--host", "127.0.0.1", "--port", str(port), "--set", f"http.tls.certificate-file={cert}",
                             "--set", f"http.tls.key-file={key}"], stderr=subprocess.PIPE)
    https = f"https://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{https}/health", verify=str(cert), timeout=1).json()["status"] == "ok", 15,
               what="TLS gateway up")
    # Plain HTTP on the TLS port gets no HTTP answer.
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
    c = StompClient(f"wss://127.0.0.1:{port}/stomp", sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(cert)})
    try:
        c.connect()
        c.subscribe("/topic/secure", id="1", receipt="r")
        r = requests.post(f"{https}/api/notification", json={"topic": "/topic/secure", "message": "over TLS"}, verify=str(cert), timeout=5)
        assert r.status_code == 200
        assert c.expect_message().text == "over TLS"
    finally:
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_tls_needs_both_files(tmp_path):
    out = subprocess.run([BINARY, "--port", "0", "--set", f"http.tls.certificate-file={tmp_path}/x.pem"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "http.tls.certificate-file and http.tls.key-file must be set together" in out.stderr


def test_a_replay_larger_than_the_pending_limit_arrives_whole_over_wss(tls_files):
    """Over TLS the session's writes wait in the TLS handler until a flush: the channel stayed
    writable however much of a replay was written, so the whole replay went out at once, past
    limits.max-pending-bytes, and the session ended as a slow consumer right after it (the
    pacing that prevents it over plain TCP was bypassed). Each chunk is flushed now."""
    cert, key = tls_files
    port = free_port()
    proc = subprocess.Popen([BINARY, "--host", "127.0.0.1", "--port", str(port), "--set", f"http.tls.certificate-file={cert}",
                             "--set", f"http.tls.key-file={key}", "--set", "limits.max-pending-bytes=65536",
                             "--set", "history.max-length=200"], stderr=subprocess.DEVNULL)
    https = f"https://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{https}/health", verify=str(cert), timeout=1).json()["status"] == "ok", 15,
               what="TLS gateway up")
    topic = "/topic/tls.big-replay"
    body = "x" * 8_000
    c = StompClient(f"wss://127.0.0.1:{port}/stomp", sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(cert)})
    try:
        with requests.Session() as http:
            for i in range(200):
                r = http.post(f"{https}/api/notification", json={"topic": topic, "message": f"{i:03d}{body}"}, verify=str(cert), timeout=5)
                assert r.status_code == 200
        c.connect()
        r = c.subscribe(topic, id="b", receipt="r", **{"x-last": "200"})
        assert r["x-recovered"] == "true"
        got = c.receive_many(200, timeout=20)
        assert [m.command for m in got] == ["MESSAGE"] * 200, [m.headers for m in got if m.command != "MESSAGE"][:1]
        assert [m.text[:3] for m in got] == [f"{i:03d}" for i in range(200)]
        c.expect_nothing(0.3)
    finally:
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
