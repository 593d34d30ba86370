"""TLS to Redis and ACL users: a gateway with a `rediss://` redis.url and redis.tls.* keys against
a TLS-only redis-server (certificates made with openssl by the test). Delivery works over it,
mTLS and an ACL user work, and a wrong CA, a wrong password or a bad redis.tls combination
each give a clear error."""
import subprocess

import pytest
import requests

from support.paths import BINARY
from support.process import free_port, terminate, wait_until
from support.redis import TLSFiles, redis_tls_cli, redis_tls_server_args


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TLSFiles(tmp_path_factory.mktemp("redis-tls"))


def start_redis(tls, directory, **kw):
    port = free_port()
    proc = subprocess.Popen(redis_tls_server_args(port, directory, tls, **kw), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: proc.poll() is None and redis_tls_cli(port, tls, "PING", server_name="redis.example.com" if kw.get("other_name") else None) == "PONG",
               10, what="TLS redis-server up")
    return port, proc


@pytest.fixture(scope="module")
def redis_tls(tls, tmp_path_factory):
    """A TLS-only redis-server requiring client certificates, with an ACL user `app`."""
    port, proc = start_redis(tls, tmp_path_factory.mktemp("redis-data"), auth_clients=True)
    assert redis_tls_cli(port, tls, "ACL", "SETUSER", "app", "on", ">app-secret", "~*", "&*", "+@all") == "OK"
    yield port
    terminate(proc)


@pytest.fixture(scope="module")
def redis_tls_other_name(tls, tmp_path_factory):
    """A TLS-only redis-server whose certificate names redis.example.com only."""
    port, proc = start_redis(tls, tmp_path_factory.mktemp("redis-data"), other_name=True)
    yield port
    terminate(proc)


def tls_sets(tls, port, userinfo="app:app-secret@", ca=None, client_cert=True):
    sets = [f"redis.url=rediss://{userinfo}127.0.0.1:{port}", f"redis.tls.ca-file={ca or tls.ca}", "redis.connect-timeout-ms=1000"]
    if client_cert:
        sets += [f"redis.tls.cert-file={tls.client}", f"redis.tls.key-file={tls.client_key}"]
    return sets


def readiness(gw):
    r = requests.get(gw.base + "/health/ready", timeout=2)
    return r.status_code, r.text


def test_delivery_over_tls_with_an_acl_user(gateway_factory, clients, tls, redis_tls):
    gw = gateway_factory(*tls_sets(tls, redis_tls))
    wait_until(lambda: readiness(gw)[0] == 200, 15, what="ready over TLS")
    c = clients(gw)
    c.subscribe("/topic/tls", id="1", receipt="r1")
    r = gw.publish("/topic/tls", "over rediss")
    assert r.status_code == 200, r.text
    assert c.expect_message().text == "over rediss"
    assert gw.health()["engine"] == "redis"
    # The gateway's connections are the ACL user's.
    clients_list = redis_tls_cli(redis_tls, tls, "CLIENT", "LIST")
    assert "user=app" in clients_list and "name=switchboard-" in clients_list


def test_server_name_verification(gateway_factory, tls, redis_tls_other_name):
    # The server's certificate names redis.example.com, not 127.0.0.1.
    port = redis_tls_other_name
    sets = [f"redis.url=rediss://127.0.0.1:{port}", f"redis.tls.ca-file={tls.ca}", "redis.connect-timeout-ms=1000"]
    strict = gateway_factory(*sets)
    wait_until(lambda: "does not name '127.0.0.1'" in readiness(strict)[1], 15, what="name mismatch reported")
    assert readiness(strict)[0] == 503
    named = gateway_factory(*sets, "redis.tls.server-name=redis.example.com")
    wait_until(lambda: readiness(named)[0] == 200, 15, what="ready with the certificate's name")
    relaxed = gateway_factory(*sets, "redis.tls.verify-server-name=false")
    wait_until(lambda: readiness(relaxed)[0] == 200, 15, what="ready without name verification")


@pytest.mark.parametrize("case,expected", [
    ("wrong-ca", "not signed by a trusted CA"),
    ("no-client-cert", "client certificate"),
    ("wrong-password", "WRONGPASS"),
])
def test_failures_are_explained_by_readiness(gateway_factory, tls, redis_tls, case, expected):
    sets = {
        "wrong-ca": lambda: tls_sets(tls, redis_tls, ca=tls.other_ca),
        "no-client-cert": lambda: tls_sets(tls, redis_tls, client_cert=False),
        "wrong-password": lambda: tls_sets(tls, redis_tls, userinfo="app:wrong@"),
    }[case]()
    gw = gateway_factory(*sets)
    status, text = wait_until(lambda: (lambda r: r if expected in r[1] else None)(readiness(gw)), 15, what=f"{expected} in readiness")
    assert status == 503
    gw.log.flush()
    assert expected in gw.log_path.read_text(errors="replace"), "the reason is logged as well"


def run(*args):
    return subprocess.run([BINARY, "--port", "0", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("sets,message", [
    (["redis.url=rediss://127.0.0.1:1", "redis.tls.cert-file={client}"], "redis.tls.cert-file is set without redis.tls.key-file"),
    (["redis.url=rediss://127.0.0.1:1", "redis.tls.ca-file=/nonexistent/ca.pem"], "redis.tls.ca-file '/nonexistent/ca.pem' cannot be read"),
    (["redis.url=rediss://127.0.0.1:1", "redis.tls.cert-file={client}", "redis.tls.key-file={ca}"], "redis.tls.key-file"),
    (["redis.url=redis://127.0.0.1:1", "redis.tls.ca-file={ca}"], "redis.tls.ca-file is set but redis.url does not start with rediss://"),
])
def test_bad_tls_configuration_stops_start_up(tls, sets, message):
    args = []
    for s in sets:
        args += ["--set", s.format(client=tls.client, ca=tls.ca)]
    out = run(*args)
    assert out.returncode != 0, f"started; stderr:\n{out.stderr}"
    assert message in out.stderr, out.stderr
