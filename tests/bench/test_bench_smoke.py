"""CI smoke test for the load generator (switchboard-bench).

Builds nothing: it uses the binaries named by SWITCHBOARD_BENCH_BIN (default
switchboard-bench beside SWITCHBOARD_BIN) and SWITCHBOARD_BIN (default .build/debug/switchboard),
starts a gateway on a free port, runs the generator for ~3 s with 20 subscribers at a
modest publish rate, and checks the JSON line it prints.
"""
import json
import os
import subprocess
import time

import pytest

from support.gateway import Gateway
from support.paths import BENCH_BIN as BENCH
from support.process import wait_until

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


def test_bench_subscribe_and_publish_processes(gateway, tmp_path):
    """The split roles: a subscriber process with ready/stop files and a publisher process."""
    port, proc = gateway
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    sub = subprocess.Popen(
        [BENCH, "subscribe", "--port", str(port), "--connections", "10", "--topics", "5",
         "--ready-file", str(ready), "--stop-file", str(stop), "--hold", "60", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(ready.exists, 30, what="subscribers ready")
    pub = subprocess.run(
        [BENCH, "publish", "--port", str(port), "--topics", "5", "--rate", "50", "--duration", "2"],
        capture_output=True, text=True, timeout=60)
    assert pub.returncode == 0, pub.stderr
    p = json.loads(pub.stdout.strip().splitlines()[-1])
    assert p["published"] == 100 and p["responses_ok"] == 100
    time.sleep(1.0)  # the subscriber process tells its count only when stopped: let in-flight deliveries land
    stop.touch()
    so, se = sub.communicate(timeout=30)
    s = json.loads(so.strip().splitlines()[-1])
    assert s["connect_ok"] == 10
    # 100 messages over 5 topics, 2 subscribers per topic
    assert s["deliveries"] == 200, se
    assert s["duplicates"] == 0 and s["lost"] == 0
