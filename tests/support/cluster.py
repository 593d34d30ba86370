"""A real cluster for multi-process tests: redis-server, up to 3 switchboard gateways (instance
ids gw0..gwN-1) behind haproxy, and greeting-service replicas, each on free ports, with its own
directory; logs in ``test-artifacts/<name>-<process>.log``. With ``redis_cluster`` a Redis
Cluster (support.rediscluster) replaces the redis-server, and everything is pointed at it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import requests

from support.paths import ARTIFACTS, BINARY, GREETING_BIN, NIO_LOOP_GONE, REPO
from support.redis import redis_cli, redis_server_args
from support.process import free_port, popen_retrying, terminate, wait_until
from support.rediscluster import RedisCluster
from support.stompclient import StompClient


class Cluster:
    """`config`: a file name in examples/, or `config_yaml`: the configuration's text."""

    def __init__(self, name: str, replicas: int = 2, replica_args=(), config: str = "seed-streams.yaml",
                 gateways: int = 3, config_yaml: str | None = None, redis_args=(), sentinels: int = 0,
                 gateway_args=(), redis_cluster: dict | None = None, redis_env: dict | None = None):
        """`sentinels` > 0: a Redis replica and that many sentinels (master name ``main``) too, and
        the gateways find the primary through them (``redis.sentinel.*``). `gateway_args`: more
        arguments for every gateway (e.g. ``("--set", "history.max-length=10000")``).
        `redis_cluster`: a Redis Cluster instead of one redis-server, made with these
        RedisCluster arguments (``{}``: 3 primaries + 3 replicas; ``tls``, ``user``); gateways get
        ``redis.cluster.nodes`` (and the TLS files, the user in ``redis.url``), replicas
        ``--redis-cluster-nodes``; ``rc`` is the RedisCluster. `redis_env`: more environment
        variables for the redis-server (e.g. libfaketime's)."""
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"sb-{name}-"))
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob(f"{name}-*.log"):  # logs of an earlier run of this test
            old.unlink()
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.gw_ports = [free_port() for _ in range(gateways)]
        # http.api-port of each gateway: haproxy's `api` backend (examples/haproxy.cfg) uses it.
        self.api_ports = [free_port() for _ in range(gateways)]
        self.lb_port = free_port()
        if config_yaml is None:
            self.config = REPO / "examples" / config
        else:
            self.config = self.dir / "switchboard.yaml"
            self.config.write_text(config_yaml)
        self.replica_args = list(replica_args)
        self.redis_args = list(redis_args)  # e.g. AOF on; later options win
        self.redis_env = dict(redis_env or {})
        self.gateway_args = list(gateway_args)
        self.sentinel_ports: list[int] = []
        self.redis_cluster_args = redis_cluster
        self.rc: RedisCluster | None = None
        try:
            self.start_redis()
            if sentinels:
                self.start_sentinels(sentinels)
            for i in range(gateways):
                self.start_gateway(i)
            for i in range(gateways):
                self.wait_ready(i)
            self.start_haproxy()
            for j in range(replicas):
                self.start_replica(j)
        except BaseException:
            self.stop()
            raise

    # -- processes --------------------------------------------------------------
    def _spawn(self, key, args, env: dict | None = None):
        log = open(ARTIFACTS / f"{self.name}-{key}.log", "ab")
        full_env = {**os.environ, **env} if env else None
        self.procs[key] = popen_retrying(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env=full_env)
        return self.procs[key]

    def stop(self) -> dict:
        """SIGTERM to every process, then their exit codes ("killed" after 10 s)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {key: terminate(p, send=False) for key, p in list(self.procs.items())}
        if self.rc:
            self.rc.stop()
        return codes

    def start_redis(self):
        if self.redis_cluster_args is not None:
            if self.rc is None:
                self.rc = RedisCluster(self.dir / "redis-cluster", self.name, **self.redis_cluster_args)
            self.redis_port = self.rc.nodes[0].port
            return
        self._spawn("redis", redis_server_args(self.redis_port, self.dir) + self.redis_args, env=self.redis_env)
        wait_until(lambda: self.redis_cli("PING") == "PONG", what="redis")

    def start_sentinels(self, count: int):
        """A replica of the primary (``redis_replica_port``) and `count` sentinels monitoring it
        with short timeouts (down after 1 s)."""
        self.redis_replica_port = free_port()
        replica_dir = self.dir / "replica"
        replica_dir.mkdir()
        self._spawn("redis-replica", redis_server_args(self.redis_replica_port, replica_dir)
                    + ["--replicaof", "127.0.0.1", str(self.redis_port)])
        wait_until(lambda: "master_link_status:up" in redis_cli(self.redis_replica_port, "INFO", "replication"), what="replica")
        for k in range(count):
            port, directory = free_port(), self.dir / f"sentinel{k}"
            directory.mkdir()
            (directory / "sentinel.conf").write_text(
                f"sentinel monitor main 127.0.0.1 {self.redis_port} 1\n"
                "sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 3000\n")
            self._spawn(f"sentinel{k}", ["redis-server", str(directory / "sentinel.conf"), "--sentinel", "--port", str(port),
                                         "--bind", "127.0.0.1", "--dir", str(directory)])
            self.sentinel_ports.append(port)
            wait_until(lambda: redis_cli(port, "PING") == "PONG", what=f"sentinel{k}")
        wait_until(lambda: str(self.redis_replica_port) in redis_cli(self.sentinel_ports[0], "SENTINEL", "REPLICAS", "main"),
                   what="sentinel sees the replica")

    def kill_redis(self):
        p = self.procs.pop("redis")
        p.kill()
        p.wait(5)

    def redis_cli(self, *args, timeout=5) -> str:
        """redis-cli `args` (on a Redis Cluster: against a running node, following MOVED)."""
        if self.rc:
            return self.rc.any_cli(*args, timeout=timeout)
        return redis_cli(self.redis_port, *args, timeout=timeout)

    @property
    def redis_url(self) -> str:
        """redis.url / --redis-url: on a Redis Cluster the scheme and user apply to every node
        (its host and port are not used)."""
        if not self.rc:
            return f"redis://127.0.0.1:{self.redis_port}"
        user = f"{self.rc.user[0]}:{self.rc.user[1]}@" if self.rc.user else ""
        return f"{'rediss' if self.rc.tls else 'redis'}://{user}127.0.0.1:{self.redis_port}"

    def redis_cluster_gateway_args(self) -> list[str]:
        """A gateway's arguments for the Redis Cluster (none without one)."""
        if not self.rc:
            return []
        args = ["--set", f"redis.cluster.nodes={self.rc.seeds}"]
        if self.rc.tls:
            t = self.rc.tls
            args += ["--set", f"redis.tls.ca-file={t.ca}", "--set", f"redis.tls.cert-file={t.client}",
                     "--set", f"redis.tls.key-file={t.client_key}"]
        return args

    def start_gateway(self, i: int, *extra):
        if self.sentinel_ports:  # the URL's host and port are not used with sentinels
            extra = ("--set", "redis.sentinel.nodes=" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                     "--set", "redis.sentinel.master-name=main", *extra)
        self._spawn(f"gw{i}", [BINARY, "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.gw_ports[i]),
                               "--set", f"http.api-port={self.api_ports[i]}",
                               "--set", f"redis.url={self.redis_url}", *self.redis_cluster_gateway_args(), "--set", f"instance.id=gw{i}",
                               "--set", "server.shutdown-grace-ms=2000", *self.gateway_args, *extra])

    def stop_one(self, key: str):
        """SIGTERM to one process (e.g. ``gw2``), then its exit code; it is forgotten."""
        return terminate(self.procs.pop(key))

    def wait_ready(self, i: int, timeout=20.0):
        wait_until(lambda: requests.get(f"{self.gw_url(i)}/health/ready", timeout=1).status_code == 200, timeout, what=f"gw{i} ready")

    def kill_gateway(self, i: int):
        p = self.procs.pop(f"gw{i}")
        p.kill()
        p.wait(5)

    def start_haproxy(self):
        cfg = (REPO / "examples" / "haproxy.cfg").read_text().replace("@LISTEN_PORT@", str(self.lb_port))
        for i, (port, api) in enumerate(zip(self.gw_ports, self.api_ports)):
            cfg = cfg.replace(f"@GATEWAY_{i + 1}@", str(port)).replace(f"@API_{i + 1}@", str(api))
        for i in range(len(self.gw_ports), 3):  # fewer gateways: drop the unused lines
            cfg = "\n".join(l for l in cfg.splitlines() if f"@GATEWAY_{i + 1}@" not in l and f"@API_{i + 1}@" not in l) + "\n"
        # A runtime socket for tests that look at haproxy's view of the servers (server_states).
        self.haproxy_socket = self.dir / "haproxy.sock"
        cfg = cfg.replace("global\n", f"global\n    stats socket {self.haproxy_socket} mode 600 level admin\n", 1)
        # One log line per request or tunnel in the test's haproxy log (its termination state
        # says who ended it and why, e.g. a 400's "PR--").
        cfg = cfg.replace("global\n", "global\n    log stdout format raw local0 info\n", 1)
        cfg = cfg.replace("defaults\n", "defaults\n    log global\n    option httplog\n", 1)
        path = self.dir / "haproxy.cfg"
        path.write_text(cfg)
        self._spawn("haproxy", ["haproxy", "-f", str(path)])
        wait_until(lambda: requests.get(f"{self.lb_url}/health", timeout=1).status_code == 200, what="haproxy")

    def haproxy_command(self, command: str) -> str:
        """One command on haproxy's runtime socket (e.g. ``show errors``: the last requests and
        responses haproxy found invalid, byte by byte), and its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.haproxy_socket))
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode(errors="replace")

    def server_states(self, backend: str) -> dict[str, str]:
        """haproxy's status of each server of `backend` (``UP``, ``DOWN``, ``no check``, …),
        from its runtime socket."""
        lines = self.haproxy_command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, l.split(","))) for l in lines[1:] if l]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_all_up(self, timeout=20.0):
        """Waits until haproxy has every gateway up: on a loaded machine a readiness check can
        miss twice, and while an instance is down round-robin spreads over the others only."""
        names = [f"gw{i + 1}" for i in range(len(self.gw_ports))]
        wait_until(lambda: all(self.server_states("api").get(n) == "UP" for n in names), timeout, what="haproxy sees every gateway up")

    def start_replica(self, j: int, *extra):
        if self.rc:
            t = self.rc.tls
            tls = ("--redis-tls-ca-file", str(t.ca), "--redis-tls-cert-file", str(t.client), "--redis-tls-key-file", str(t.client_key)) if t else ()
            extra = ("--redis-cluster-nodes", self.rc.seeds, *tls, *extra)
        self._spawn(f"replica{j}", [GREETING_BIN, "--redis-url", self.redis_url,
                                    "--stream", "GREETING_CHANNEL_OUTBOUND", "--group", "greeting-service",
                                    "--consumer", f"greeting-{j}", *self.replica_args, *extra])

    def kill_replica(self, j: int):
        p = self.procs.pop(f"replica{j}")
        p.send_signal(signal.SIGKILL)
        p.wait(5)

    def replica_log(self, j: int) -> str:
        return (ARTIFACTS / f"{self.name}-replica{j}.log").read_text(errors="replace")

    # -- addresses and clients --------------------------------------------------
    @property
    def lb_url(self):
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def lb_ws(self):
        return f"ws://127.0.0.1:{self.lb_port}/stomp"

    def gw_url(self, i):
        return f"http://127.0.0.1:{self.gw_ports[i]}"

    def gw_ws(self, i):
        return f"ws://127.0.0.1:{self.gw_ports[i]}/stomp"

    def client(self, url=None) -> StompClient:
        c = StompClient(url or self.lb_ws, timeout=10)
        c.connect()
        return c

    @staticmethod
    def instance_of(client: StompClient) -> str:
        return client.connected_frame["session"].split("-s-")[0]


def stop_cluster(cluster: Cluster):
    """Stops `cluster`; every gateway must exit 0 on SIGTERM, and none may have touched an event
    loop after it stopped (NIO prints it now, and will crash on it)."""
    codes = cluster.stop()
    bad = {k: v for k, v in codes.items() if k.startswith("gw") and v != 0}
    assert not bad, f"gateways did not exit 0 on SIGTERM: {bad}"
    late = [log.name for log in ARTIFACTS.glob(f"{cluster.name}-gw*.log") if NIO_LOOP_GONE in log.read_text(errors="replace")]
    assert not late, f"a gateway scheduled work on a stopped event loop: {late}"
