"""A real cluster for multi-process tests: redis-server, 3 switchboard gateways behind
haproxy, and greeting-service replicas, each on free ports with its own directory."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import gatewayproc  # noqa: E402
from gatewayproc import free_port, wait_until  # noqa: E402,F401
from stompclient import StompClient  # noqa: E402

BIN = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / ".build" / "debug" / "switchboard"))
GREETING_BIN = Path(os.environ.get("GREETING_SERVICE_BIN", BIN.parent / "greeting-service"))
ARTIFACTS = ROOT / "test-artifacts"



class Cluster(gatewayproc.ProcessCluster):
    def __init__(self, name: str, replicas: int = 2, replica_args=(), config: str = "seed-streams.yaml", gateways: int = 3):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"sb-{name}-"))
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob(f"{name}-*.log"):  # logs of an earlier run of this test
            old.unlink()
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.gw_ports = [free_port() for _ in range(gateways)]
        self.lb_port = free_port()
        self.config = ROOT / "examples" / config
        self.start_redis()
        for i in range(gateways):
            self.start_gateway(i)
        for i in range(gateways):
            self.wait_ready(i)
        self.start_haproxy()
        self.replica_args = list(replica_args)
        for j in range(replicas):
            self.start_replica(j)

    # -- processes --------------------------------------------------------------
    def _spawn(self, key, args):
        log = open(ARTIFACTS / f"{self.name}-{key}.log", "ab")
        self.procs[key] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        return self.procs[key]

    def start_redis(self):
        self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                              "--save", "", "--appendonly", "no"])
        wait_until(lambda: self.redis_cli("PING") == "PONG", what="redis")

    def kill_redis(self):
        p = self.procs.pop("redis")
        p.kill()
        p.wait(5)

    def redis_cli(self, *args, timeout=5) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port), *args], capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip()

    def start_gateway(self, i: int, *extra):
        self._spawn(f"gw{i}", [str(BIN), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.gw_ports[i]),
                               "--set", f"redis.url=redis://127.0.0.1:{self.redis_port}", "--set", f"instance.id=gw{i}",
                               "--set", "server.shutdown-grace-ms=2000", *extra])

    def wait_ready(self, i: int, timeout=15.0):
        wait_until(lambda: requests.get(f"{self.gw_url(i)}/health/ready", timeout=1).status_code == 200, timeout, what=f"gw{i} ready")

    def kill_gateway(self, i: int):
        p = self.procs.pop(f"gw{i}")
        p.kill()
        p.wait(5)

    def start_haproxy(self):
        cfg = (ROOT / "examples" / "haproxy.cfg").read_text().replace("@LISTEN_PORT@", str(self.lb_port))
        for i, port in enumerate(self.gw_ports):
            cfg = cfg.replace(f"@GATEWAY_{i + 1}@", str(port))
        for i in range(len(self.gw_ports), 3):  # fewer gateways: drop the unused lines
            cfg = "\n".join(l for l in cfg.splitlines() if f"@GATEWAY_{i + 1}@" not in l) + "\n"
        path = self.dir / "haproxy.cfg"
        path.write_text(cfg)
        self._spawn("haproxy", ["haproxy", "-f", str(path)])
        wait_until(lambda: requests.get(f"{self.lb_url}/health", timeout=1).status_code == 200, what="haproxy")

    def start_replica(self, j: int, *extra):
        self._spawn(f"replica{j}", [str(GREETING_BIN), "--redis-url", f"redis://127.0.0.1:{self.redis_port}",
                                    "--stream", "GREETING_CHANNEL_OUTBOUND", "--group", "greeting-service",
                                    "--consumer", f"greeting-{j}", *self.replica_args, *extra])

    def kill_replica(self, j: int):
        p = self.procs.pop(f"replica{j}")
        p.send_signal(signal.SIGKILL)
        p.wait(5)

    def replica_log(self, j: int) -> str:
        return (ARTIFACTS / f"{self.name}-replica{j}.log").read_text(errors="replace")


    def client(self, url=None) -> StompClient:
        c = StompClient(url or self.lb_ws, timeout=10)
        c.connect()
        return c

    @staticmethod
    def instance_of(client: StompClient) -> str:
        return client.connected_frame["session"].split("-s-")[0]


@pytest.fixture
def cluster_factory(request):
    made = []

    def make(**kw):
        name = request.node.name.replace("[", "_").replace("]", "")[:60]
        c = Cluster(name + (f"-{len(made)}" if made else ""), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        codes = c.stop()
        bad = {k: v for k, v in codes.items() if k.startswith("gw") and v != 0}
        assert not bad, f"gateways did not exit 0 on SIGTERM: {bad}"


@pytest.fixture(scope="module")
def shared_cluster(request):
    c = Cluster(request.module.__name__.split(".")[-1], replicas=0)
    yield c
    codes = c.stop()
    bad = {k: v for k, v in codes.items() if k.startswith("gw") and v != 0}
    assert not bad, f"gateways did not exit 0 on SIGTERM: {bad}"


@pytest.fixture
def clients():
    made = []

    def track(c):
        made.append(c)
        return c

    yield track
    for c in made:
        c.close()
