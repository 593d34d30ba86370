"""A real local Redis Cluster for tests: `primaries` primaries with `replicas` replicas each
(``redis-cli --cluster create ... --cluster-replicas``), each node a ``redis-server`` on free
ports (client port and cluster bus port) with its own directory and config file; logs in
``test-artifacts/<name>-redisN.log``.

Options: ``tls`` (a ``support.redis.TLSFiles``): every node TLS only (``port 0``, ``tls-port``,
``tls-cluster yes``, ``tls-replication yes``), ``mtls``: client certificates required; ``user`` (name, password): an ACL user on every
node, the default user off, replication as that user. ``cli`` speaks the node's way (TLS, user).

Helpers: ``wait_healthy`` (``cluster_state:ok`` on every running node, one slot map),
``fail_primary`` (writes held until the replicas have them, ``kill -9``, and wait for the replica's promotion), ``restart``,
``reshard`` (``redis-cli --cluster reshard``: the `count` lowest slots of a primary),
``node_for_key``, ``keyslot`` (CRC16 like Redis: ``{hash tags}`` included)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from support.paths import ARTIFACTS
from support.process import free_port, popen_retrying, terminate, wait_until
from support.redis import TLSFiles, pause_until_replicated

SLOTS = 16384


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the hash of Redis Cluster's key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def keyslot(key: str) -> int:
    """The slot of `key`; a non-empty ``{tag}`` (the first ``{`` to the next ``}``) is hashed
    alone, as Redis does."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return _crc16(raw) % SLOTS


@dataclass
class Node:
    index: int
    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen | None = None
    log: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    def __init__(self, directory: Path, name: str, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 tls: TLSFiles | None = None, user: tuple[str, str] | None = None, extra_config: str = "",
                 mtls: bool = False):
        """`mtls`: with `tls`, every node requires a client certificate (else optional)."""
        self.name, self.tls, self.user, self.mtls = name, tls, user, mtls
        self.extra_config = extra_config
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = []
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            for i in range(primaries * (1 + replicas)):
                d = Path(directory) / f"redis{i}"
                d.mkdir(parents=True)
                node = Node(i, free_port(), free_port(), d)
                self.nodes.append(node)
                self.start(node)
            self.cli(self.nodes[0], "--cluster", "create", *(n.address for n in self.nodes),
                     "--cluster-replicas", str(replicas), "--cluster-yes", timeout=60, check=True)
            # Replicas too: every node learns by gossip which primary each replica follows, and
            # on a loaded machine the slot map can agree before that.
            self.wait_healthy(replicas=replicas)
        except BaseException:
            self.stop()
            raise

    # -- processes --------------------------------------------------------------
    def _config(self, node: Node) -> str:
        lines = ["bind 127.0.0.1", f"dir {node.dir}", 'save ""', "appendonly no",
                 "cluster-enabled yes", "cluster-config-file nodes.conf", f"cluster-node-timeout {self.node_timeout_ms}",
                 "cluster-replica-validity-factor 0", f"cluster-port {node.bus_port}",
                 # A replica syncs at once (the default waits 5 s for more replicas).
                 "repl-diskless-sync-delay 0"]
        if self.tls:
            t = self.tls
            lines += ["port 0", f"tls-port {node.port}", f"tls-cert-file {t.server}", f"tls-key-file {t.server_key}",
                      f"tls-ca-cert-file {t.ca}", f"tls-auth-clients {'yes' if self.mtls else 'optional'}", "tls-cluster yes", "tls-replication yes",
                      # The certificate a node presents when it connects (cluster bus,
                      # replication) needs the clientAuth usage.
                      f"tls-client-cert-file {t.client}", f"tls-client-key-file {t.client_key}"]
        else:
            lines.append(f"port {node.port}")
        if self.user:
            name, password = self.user
            lines += [f"user {name} on >{password} ~* &* +@all", "user default off", f"masteruser {name}", f"masterauth {password}"]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self, node: Node):
        """Starts `node` (again: with its nodes.conf, it rejoins the cluster) and waits for PING."""
        conf = node.dir / "redis.conf"
        conf.write_text(self._config(node))
        node.log = open(ARTIFACTS / f"{self.name}-redis{node.index}.log", "ab")
        node.proc = popen_retrying(["redis-server", str(conf)], stdout=node.log, stderr=subprocess.STDOUT, cwd=node.dir)
        wait_until(lambda: node.running() and self.cli(node, "PING") == "PONG", 10, what=f"redis{node.index} up")

    def kill(self, node: Node):
        """kill -9."""
        node.proc.kill()
        node.proc.wait(5)

    def restart(self, node: Node):
        """Starts a stopped or killed node again and waits for the cluster to be healthy with it."""
        if node.running():
            self.kill(node)
        self.start(node)
        self.wait_healthy()

    def stop(self):
        for n in self.nodes:
            if n.running():
                terminate(n.proc)
            if n.log:
                n.log.close()
                n.log = None

    # -- redis-cli ---------------------------------------------------------------
    def cli_args(self) -> list[str]:
        """redis-cli's options for these nodes (TLS, the user), without -p."""
        args = []
        if self.tls:
            args += ["--tls", "--cacert", str(self.tls.ca), "--cert", str(self.tls.client), "--key", str(self.tls.client_key)]
        if self.user:
            args += ["--user", self.user[0], "--pass", self.user[1], "--no-auth-warning"]
        return args

    def cli(self, node: Node, *args, timeout=10, check=False, follow=False) -> str:
        """redis-cli `args` against `node` (`follow`: -c, follow MOVED); its output, stripped.
        `check`: fail with the output when redis-cli exits non-zero."""
        out = subprocess.run(["redis-cli", *self.cli_args(), *(["-c"] if follow else []), "-p", str(node.port), *args],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"redis-cli {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout.strip()

    def any_cli(self, *args, **kw) -> str:
        """redis-cli -c against the first running node: for commands on keys."""
        return self.cli(self.running_nodes()[0], *args, follow=True, **kw)

    # -- topology ----------------------------------------------------------------
    def running_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.running()]

    @property
    def seeds(self) -> str:
        """`host:port,...` of every node, for redis.cluster.nodes and --redis-cluster-nodes."""
        return ",".join(n.address for n in self.nodes)

    def node_id(self, node: Node) -> str:
        return self.cli(node, "CLUSTER", "MYID")

    def topology(self, via: Node | None = None) -> dict[str, dict]:
        """CLUSTER NODES as {node id: {port, primary (bool), primary_of (id or None), slots
        (set), failed (bool)}}."""
        text = self.cli(via or self.running_nodes()[0], "CLUSTER", "NODES")
        result = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            slots = set()
            for s in parts[8:]:
                if s.startswith("["):  # a slot being migrated or imported
                    continue
                lo, _, hi = s.partition("-")
                slots.update(range(int(lo), int(hi or lo) + 1))
            flags = parts[2].split(",")
            result[parts[0]] = {"port": int(parts[1].split("@")[0].rsplit(":", 1)[1]), "primary": "master" in flags,
                                "primary_of": None if parts[3] == "-" else parts[3], "slots": slots,
                                "failed": "fail" in flags or "fail?" in flags}
        return result

    def node_by_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primaries(self) -> list[Node]:
        """The running primaries that own slots, in slot order."""
        topo = self.topology()
        owners = sorted((min(v["slots"]), v["port"]) for v in topo.values() if v["primary"] and v["slots"] and not v["failed"])
        return [self.node_by_port(port) for _, port in owners if self.node_by_port(port).running()]

    def replicas_of(self, primary: Node) -> list[Node]:
        topo = self.topology()
        pid = next(k for k, v in topo.items() if v["port"] == primary.port)
        return [self.node_by_port(v["port"]) for v in topo.values() if v["primary_of"] == pid]

    def owner_of_slot(self, slot: int) -> Node:
        for v in self.topology().values():
            if v["primary"] and not v["failed"] and slot in v["slots"]:
                return self.node_by_port(v["port"])
        raise AssertionError(f"no primary owns slot {slot}")

    def node_for_key(self, key: str) -> Node:
        """The primary that owns `key`'s slot."""
        return self.owner_of_slot(keyslot(key))

    def wait_healthy(self, timeout: float = 30.0, replicas: int | None = None):
        """Every running node: cluster_state:ok, and all agree on which node owns each slot
        (and, after a promotion, that it is the promoted node); with `replicas`, every node also
        sees that many healthy replicas behind each primary."""
        seen = {}

        def healthy():
            maps = set()
            for n in self.running_nodes():
                info = self.cli(n, "CLUSTER", "INFO")
                seen[n.port] = info.splitlines()[:1] + [self.cli(n, "CLUSTER", "NODES")]
                if "cluster_state:ok" not in info:
                    return False
                topo = self.topology(n)
                owners = tuple(sorted((v["port"], min(v["slots"]), len(v["slots"])) for v in topo.values()
                                      if v["primary"] and v["slots"] and not v["failed"]))
                if sum(o[2] for o in owners) != SLOTS:
                    return False
                if replicas is not None:
                    for pid, v in topo.items():
                        if v["primary"] and v["slots"] and not v["failed"]:
                            behind = [r for r in topo.values() if r["primary_of"] == pid and not r["failed"]]
                            if len(behind) != replicas:
                                return False
                maps.add(owners)
            return len(maps) == 1
        try:
            wait_until(healthy, timeout, 0.2, what=f"{self.name}: cluster_state:ok and one slot map on every node")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen per node: " + "\n".join(f"{p}: {v}" for p, v in seen.items())) from None

    def fail_primary(self, primary: Node, timeout: float = 30.0, while_down=None, hold_writes: bool = True) -> Node:
        """kill -9 of `primary`; calls `while_down()` (if given) at once, then waits for one of
        its replicas to be promoted (owning its slots, cluster healthy again) and returns it.

        Replication is asynchronous: a write the primary acknowledged but its replicas had not
        received yet is lost in the failover (a Redis property, docs/scaling.md). So that a test
        sees what the gateways do, not that window, the primary's writes are paused first
        (``CLIENT PAUSE … WRITE``: clients' writes wait, unanswered) until its replicas have
        every write it acknowledged; the kill comes then, with the held writes unanswered.
        `hold_writes=False` kills it at once, mid-traffic: for what claims to survive that
        window (``redis.wait-replicas``)."""
        replicas = self.replicas_of(primary)
        assert replicas, f"redis{primary.index} has no replica"
        slots = self.slots_of(primary)
        if hold_writes:
            pause_until_replicated(lambda *args: self.cli(primary, *args, check=True), timeout)
        self.kill(primary)
        if while_down:
            while_down()

        def promoted():
            owner = self.owner_of_slot(min(slots))
            return owner if owner in replicas and self.cli(owner, "ROLE").startswith("master") else None
        new = wait_until(promoted, timeout, 0.2, what=f"a replica of redis{primary.index} promoted")
        self.wait_healthy(timeout)
        return new

    def slots_of(self, primary: Node) -> set[int]:
        return next(v["slots"] for v in self.topology().values() if v["port"] == primary.port)

    def lowest_slots(self, primary: Node, count: int) -> list[int]:
        """The `count` lowest slots of `primary`: those ``reshard`` moves."""
        return sorted(self.slots_of(primary))[:count]

    def reshard(self, count: int, source: Node, target: Node, timeout: float = 120.0) -> str:
        """``redis-cli --cluster reshard``: moves the `count` lowest slots of `source` (with
        their keys) to `target`; returns redis-cli's output, waits until every node agrees."""
        out = self.cli(source, "--cluster", "reshard", source.address, "--cluster-from", self.node_id(source),
                       "--cluster-to", self.node_id(target), "--cluster-slots", str(count), "--cluster-yes",
                       timeout=timeout, check=True)
        self.wait_healthy()
        # Every node, replicas too, agrees and no slot is left open (importing/migrating): a
        # replica promoted before it learned the last moved slot would leave that slot orphaned.
        wait_until(lambda: "[OK] All nodes agree" in (c := self.cli(source, "--cluster", "check", source.address, timeout=30))
                   and "[WARNING]" not in c, 30, 0.2, what=f"{self.name}: redis-cli --cluster check clean after the reshard")
        return out


def dest_channel(destination: str) -> str:
    """The gateway's sharded channel of `destination` (``switchboard:{<dest>}:dest``); its
    history keys share the hash tag, so the slot is the same."""
    return f"switchboard:{{{destination}}}:dest"


def destinations_in(slots, prefix: str, count: int) -> list[str]:
    """`count` destinations ``<prefix><n>`` whose slots are in `slots`."""
    wanted, found = set(slots), []
    n = 0
    while len(found) < count:
        d = f"{prefix}{n}"
        if keyslot(dest_channel(d)) in wanted:
            found.append(d)
        n += 1
        assert n < 10_000_000, f"no {count} destinations in {len(wanted)} slots"
    return found
