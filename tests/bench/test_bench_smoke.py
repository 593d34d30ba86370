"""CI smoke test for the load generator (switchboard-bench).

Builds nothing: it uses the binaries named by SWITCHBOARD_BENCH_BIN (default
switchboard-bench beside SWITCHBOARD_BIN) and SWITCHBOARD_BIN (default .build/debug/switchboard),
starts a gateway on a free port, runs the generator for ~3 s with 20 subscribers at a
modest publish rate, and checks the JSON line it prints.
"""
import json
import os
import socket
import subprocess
import threading

import pytest

from support.gateway import Gateway
from support.paths import BENCH_BIN as BENCH
from support.process import wait_until
from support.sockets import recv_until

SUBSCRIBERS = 20
RATE = 40
DURATION = 3


@pytest.fixture
def gateway():
    if not os.path.exists(BENCH):
        pytest.fail(f"load generator not built: {BENCH} (SWITCHBOARD_LOADGEN=1 swift build)")
    gw = Gateway(["stomp.heartbeat.send-ms=0", "stomp.heartbeat.receive-ms=0"], name="test_bench_smoke",
                 log_level="warning")
    yield gw.port, gw.proc
    gw.stop()


@pytest.mark.parametrize("via,extra", [("http", []), ("stomp", []), ("http", ["--pipeline-subscribe"])],
                         ids=["http", "stomp", "pipelined-subscribe"])
def test_bench_run_counts_every_delivery(gateway, via, extra):
    port, proc = gateway
    out = subprocess.run(
        [BENCH, "run", "--port", str(port), "--connections", str(SUBSCRIBERS),
         "--rate", str(RATE), "--duration", str(DURATION), "--via", via,
         "--threads", "2", "--server-pid", str(proc.pid), "--drain", "10", *extra],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, out.stdout
    r = json.loads(lines[0])
    published = r["published"]
    assert published == RATE * DURATION
    assert r["connect_ok"] == SUBSCRIBERS and r["connect_failed"] == 0
    assert r["deliveries"] == SUBSCRIBERS * published, out.stderr
    assert r["lost"] == 0
    assert r["duplicates"] == 0
    assert r["unparsable"] == 0
    for k in ("p50", "p99", "p999", "max"):
        assert isinstance(r["latency_us"][k], int) and r["latency_us"][k] > 0
    assert r["latency_us"]["p50"] <= r["latency_us"]["p99"] <= r["latency_us"]["max"]
    assert r["server_rss_kb"] > 0
    assert r["deliveries_per_sec"] > 0


def run_subscriber(port, tmp_path, *args):
    """A subscriber process that finishes once every connection has all the expected messages."""
    ready = tmp_path / "ready"
    sub = subprocess.Popen(
        [BENCH, "subscribe", "--port", str(port), "--ready-file", str(ready), "--hold", "300", "--threads", "1",
         "--until-complete", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(ready.exists, 30, what="subscribers ready")
    return sub


def finished(sub):
    """The subscriber's JSON line, once it has ended by itself (its --hold is far longer)."""
    try:
        so, se = sub.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        sub.kill()
        sub.communicate()
        raise AssertionError("the subscriber did not finish when every message was in")
    return json.loads(so.strip().splitlines()[-1]), se


def publish(port, *args):
    pub = subprocess.run([BENCH, "publish", "--port", str(port), *args], capture_output=True, text=True, timeout=60)
    assert pub.returncode == 0, pub.stderr
    return json.loads(pub.stdout.strip().splitlines()[-1])


def test_bench_subscribe_and_publish_processes(gateway, tmp_path):
    """The split roles: a subscriber process with a ready file and a publisher process."""
    port, proc = gateway
    sub = run_subscriber(port, tmp_path, "--connections", "10", "--topics", "5", "--expect-published", "100")
    p = publish(port, "--topics", "5", "--rate", "50", "--duration", "2")
    assert p["published"] == 100 and p["responses_ok"] == 100
    s, se = finished(sub)
    assert s["connect_ok"] == 10
    # 100 messages over 5 topics, 2 subscribers per topic
    assert s["deliveries"] == 200, se
    assert s["duplicates"] == 0 and s["lost"] == 0 and s["lost_basis"] == "exact"


def test_bench_lone_publish_then_seq_start(gateway, tmp_path):
    """hundred-k's two phases: one publish on its own (seq 0, timed apart as first_latency_us),
    then a run that goes on from seq 1; loss is exact over both."""
    port, proc = gateway
    sub = run_subscriber(port, tmp_path, "--connections", "10", "--expect-published", "31", "--export-hist")
    lone = publish(port, "--rate", "1", "--duration", "1")
    assert lone["published"] == 1
    rest = publish(port, "--rate", "30", "--duration", "1", "--seq-start", "1")
    assert rest["published"] == 30 and rest["responses_ok"] == 30
    s, se = finished(sub)
    assert s["deliveries"] == 10 * 31, se
    assert s["duplicates"] == 0 and s["lost"] == 0
    first = s["first_latency_us"]
    assert first["count"] == 10
    assert 0 < first["p50"] <= first["max"] <= s["latency_us"]["max"]
    assert sum(c for _, c in s["first_latency_hist"]) == 10


HAPROXY_400 = (b"HTTP/1.1 400 Bad request\r\nContent-length: 90\r\nCache-Control: no-cache\r\nConnection: close\r\n"
               b"Content-Type: text/html\r\n\r\n<html><body><h1>400 Bad request</h1>\nYour browser sent an invalid request.\n"
               b"</body></html>\n")
HAPROXY_408 = (b"HTTP/1.1 408 Request Time-out\r\nContent-length: 110\r\nCache-Control: no-cache\r\nConnection: close\r\n"
               b"Content-Type: text/html\r\n\r\n<html><body><h1>408 Request Time-out</h1>\nYour browser didn't send a complete "
               b"request in time.\n</body></html>\n")


class RefusingProxy:
    """A TCP relay to the gateway that answers the first connection's first request with a
    proxy's own error page and closes it, as haproxy does; later connections are relayed."""

    def __init__(self, upstream_port, answer):
        self.upstream_port, self.answer = upstream_port, answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections == 1:
                threading.Thread(target=self.refuse, args=(client,), daemon=True).start()
            else:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def refuse(self, client):
        recv_until(client)  # the first request's head
        client.sendall(self.answer)
        client.close()

    @staticmethod
    def pipe(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


@pytest.mark.parametrize("answer", [HAPROXY_400, HAPROXY_408], ids=["proxy-400", "408"])
def test_bench_resends_what_a_proxy_refused(gateway, answer):
    """A proxy's own 400 page or a 408: that request and everything pipelined after it were not
    processed, so the publisher sends them again on a new connection; every message is then
    answered and delivered exactly once."""
    port, proc = gateway
    proxy = RefusingProxy(port, answer)
    try:
        out = subprocess.run(
            [BENCH, "run", "--port", str(port), "--publish-port", str(proxy.port), "--connections", "5", "--rate", "40",
             "--duration", "1", "--via", "http", "--http-connections", "1", "--threads", "1", "--drain", "10"],
            capture_output=True, text=True, timeout=120)
    finally:
        proxy.close()
    assert out.returncode == 0, out.stderr
    r = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
    assert proxy.connections == 2
    assert r["published"] == 40 and r["responses_ok"] == 40 and r["responses_failed"] == 0, r["error_samples"]
    assert r["retried_requests"] >= 1 and "retried on a new connection" in r["error_samples"][0]
    assert r["deliveries"] == 5 * 40 and r["lost"] == 0 and r["duplicates"] == 0
