"""The gateway on Redis Cluster (issue 20): a local 3 primaries + 3 replicas cluster
(support.rediscluster), 3 gateways with ``redis.cluster.nodes`` behind haproxy, greeting-service
replicas with ``--redis-cluster-nodes``.

- Cross-instance fan-out over many destinations spread over all 3 shards (sharded Pub/Sub:
  ``SSUBSCRIBE switchboard:{<dest>}:dest`` on the owning node), loss, duplicates and reorders
  counted per client and destination; user destinations; ``/app`` stream routes processed by
  exactly one replica; the seeds' manual tests; wildcard SUBSCRIBE refused with an ERROR.
- TLS (``rediss://``, certificates made here) with an ACL user on every node; a wrong CA.
- Bad configuration: an unreachable seed, a non-cluster server, lifecycle events on a cluster.

Failover and resharding mid-run: test_cluster_redis_cluster_faults.py."""
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from support.cluster import Cluster, stop_cluster
from support.paths import BINARY, REPO
from support.process import free_port, terminate, wait_until
from support.redis import TLSFiles, redis_server_args
from support.rediscluster import dest_channel, destinations_in, keyslot
from support.security import HMAC_SECRET, bearer, make_token


def cluster_config() -> str:
    """seed-streams.yaml's /app/greet stream route, with JWT users (anonymous allowed) and no
    inbound routes (the seed cluster below has those)."""
    cfg = yaml.safe_load((REPO / "examples" / "seed-streams.yaml").read_text())
    del cfg["redis"]["inbound"]
    cfg["auth"] = {"jwt": {"hmac-secret": HMAC_SECRET}, "allow-anonymous": True}
    return yaml.safe_dump(cfg)


@pytest.fixture(scope="module")
def rcluster():
    c = Cluster("redis-cluster", replicas=2, config_yaml=cluster_config(), redis_cluster={})
    yield c
    stop_cluster(c)


@pytest.fixture(scope="module")
def seed_cluster():
    """The seeds' configuration as is (examples/seed-streams.yaml: inbound channel, broadcast
    and stream routes, the /app/greet stream route) on a Redis Cluster."""
    c = Cluster("redis-cluster-seeds", replicas=1, redis_cluster={})
    yield c
    stop_cluster(c)


def spread(rc, prefix: str, per_shard: int) -> list[str]:
    """`per_shard` destinations on each primary."""
    out = []
    for p in rc.primaries():
        out += destinations_in(rc.slots_of(p), prefix, per_shard)
    return out


def shard_subscribers(rc, destination: str) -> int:
    """PUBSUB SHARDNUMSUB of the destination's channel on the node that owns it."""
    channel = dest_channel(destination)
    out = rc.cli(rc.node_for_key(channel), "PUBSUB", "SHARDNUMSUB", channel).splitlines()
    return int(out[1]) if len(out) == 2 else -1


def collect_by_destination(client, count: int, timeout=30.0) -> dict[str, list]:
    """Reads `count` messages; the frames per destination, in arrival order; then nothing more."""
    got: dict[str, list] = {}
    deadline = time.monotonic() + timeout
    for _ in range(count):
        f = client.expect_message(max(deadline - time.monotonic(), 0.01))
        got.setdefault(f["destination"], []).append(f)
    client.expect_nothing(0.3)
    return got


def test_fanout_over_many_destinations_on_every_shard(rcluster, clients):
    """30 destinations (10 per primary), 6 subscribers of all of them through haproxy (2 per
    instance), 3 API publishers (through haproxy, to gw1, to gw2): every subscriber gets every message of
    every destination once, in order, with dense positions; each instance holds one sharded
    subscription per destination on the node that owns it, and none on classic Pub/Sub."""
    rc = rcluster.rc
    dests = spread(rc, "/topic/rc-fan-", 10)
    assert len({rc.node_for_key(dest_channel(d)).port for d in dests}) == 3
    rcluster.wait_all_up()
    subs = [clients(rcluster.client()) for _ in range(6)]
    assert {Cluster.instance_of(c) for c in subs} == {"gw0", "gw1", "gw2"}
    for c in subs:
        for k, d in enumerate(dests):
            c.subscribe(d, id=str(k), receipt=f"r{k}")
    for d in dests:
        wait_until(lambda: shard_subscribers(rc, d) == 3, 10, what=f"3 sharded subscriptions of {d}")
        assert rcluster.redis_cli("PUBSUB", "NUMSUB", f"switchboard:dest:{d}").splitlines()[1] == "0"
    n = 10

    def publish(i):  # the first through haproxy (balanced per request), the others to gw1 and gw2
        url = rcluster.lb_url if i == 0 else rcluster.gw_url(i)
        with requests.Session() as s:
            for seq in range(n):
                for d in dests[i::3]:
                    r = s.post(f"{url}/api/notification", json={"topic": d, "message": str(seq)}, timeout=10)
                    assert r.status_code == 200, r.text

    with ThreadPoolExecutor(3) as pool:
        for job in [pool.submit(publish, i) for i in range(3)]:
            job.result(120)
    for c in subs:
        got = collect_by_destination(c, n * len(dests))
        at = Cluster.instance_of(c)
        for d in dests:
            bodies = [f.text for f in got.get(d, [])]
            assert bodies == [str(i) for i in range(n)], f"{d} at {at}: lost, duplicated or reordered: {bodies}"
            seqs = [int(f["x-position"].rsplit(":", 1)[1]) for f in got[d]]
            assert seqs == list(range(seqs[0], seqs[0] + n)), f"{d} at {at}: positions not dense: {seqs}"


def test_sharded_subscription_follows_local_interest(rcluster, clients):
    """SSUBSCRIBE on an instance's first subscriber of a destination, SUNSUBSCRIBE after its last."""
    rc, d = rcluster.rc, "/topic/rc-interest"
    assert shard_subscribers(rc, d) == 0
    a, b = (clients(rcluster.client(rcluster.gw_ws(0))) for _ in range(2))
    a.subscribe(d, id="1", receipt="r")
    b.subscribe(d, id="1", receipt="r")
    assert shard_subscribers(rc, d) == 1
    a.unsubscribe("1", receipt="u")
    assert shard_subscribers(rc, d) == 1
    b.unsubscribe("1", receipt="u")
    wait_until(lambda: shard_subscribers(rc, d) == 0, what="SUNSUBSCRIBE after the last local subscriber")


def realistic_destinations(n: int) -> list[str]:
    kinds = ["/topic/orders.{}", "/topic/prices.EUR-{}", "/topic/chat.room-{}", "/queue/jobs-{}", "/~user/user{}/queue/notes",
             "/topic/tenant-{}.dashboard", "/topic/game/{}/state", "/~session/gw1-s-{}/queue/reply"]
    return [kinds[i % len(kinds)].format(i // len(kinds)) for i in range(n)]


def test_destinations_spread_evenly_over_the_shards(rcluster):
    """10,000 realistic destination names: their channels (hash tag: the destination) spread
    over the 3 shards of this cluster, and over 6 equal shards, within 10 % of the mean."""
    counts: dict[int, int] = {}
    owners = {}
    for v in rcluster.rc.topology().values():
        if v["primary"] and v["slots"]:
            owners.update(dict.fromkeys(v["slots"], v["port"]))
    names = realistic_destinations(10_000)
    for d in names:
        port = owners[keyslot(dest_channel(d))]
        counts[port] = counts.get(port, 0) + 1
    six = [0] * 6
    for d in names:
        six[keyslot(dest_channel(d)) * 6 // 16384] += 1
    for shards in (list(counts.values()), six):
        mean = len(names) / len(shards)
        assert all(abs(c - mean) <= 0.1 * mean for c in shards), f"uneven: {shards}"


def test_user_destinations_across_instances(rcluster, clients):
    """alice on every instance, bob through haproxy: a note for alice through haproxy reaches
    each alice session once, and bob never."""
    alice = [clients(rcluster.gw_ws(i), headers=bearer(make_token(HMAC_SECRET, sub="alice"))) for i in range(3)]
    bob = clients(rcluster.lb_ws, headers=bearer(make_token(HMAC_SECRET, sub="bob")))
    for c in alice + [bob]:
        c.subscribe("/user/queue/notes", id="n", receipt="r")
    for k in range(3):
        r = requests.post(f"{rcluster.lb_url}/api/users/alice/notification", json={"topic": "/queue/notes", "message": f"note {k}"}, timeout=5)
        assert r.status_code == 200, r.text
    r = requests.post(f"{rcluster.lb_url}/api/users/bob/notification", json={"topic": "/queue/notes", "message": "for bob"}, timeout=5)
    assert r.status_code == 200, r.text
    for a in alice:
        got = [a.expect_message(10) for _ in range(3)]
        assert [(m["destination"], m.text) for m in got] == [("/user/queue/notes", f"note {k}") for k in range(3)]
    m = bob.expect_message(10)
    assert m.text == "for bob", "bob got alice's note"
    for c in alice + [bob]:
        c.expect_nothing(0.2)


def test_app_stream_route_each_send_processed_by_exactly_one_replica(rcluster, clients):
    """SENDs to /app/greet through haproxy are stored in the stream (on its node) and answered
    once each, by one of the two greeting-service replicas; every watcher on every instance
    gets every greeting once."""
    def processed():
        ids = []
        for j in (0, 1):
            ids += [l.split("processed ", 1)[1].split(" by")[0] for l in rcluster.replica_log(j).splitlines() if "processed " in l]
        return ids

    before = len(processed())
    watchers = [clients(rcluster.client(rcluster.gw_ws(i))) for i in range(3)]
    for w in watchers:
        w.subscribe("/topic/greetings", id="g", receipt="r")
    senders = [clients(rcluster.client()) for _ in range(3)]
    n = 30
    for i in range(n):
        senders[i % 3].send("/app/greet", f"user{i}", headers={"x-msg-id": f"rc-{i}"}, receipt=f"s{i}")
    for w in watchers:
        seen = {}
        for _ in range(n):
            f = w.expect_message(30)
            seen.setdefault(f["x-msg-id"], []).append(f.text)
        assert seen == {f"rc-{i}": [f"Hello, user{i}!"] for i in range(n)}
        w.expect_nothing(0.2)
    ids = wait_until(lambda: (lambda p: p if len(p) >= before + n else None)(processed()), 10, what="replica logs")
    new = ids[before:]
    assert len(new) == n and len(set(new)) == n, f"an entry was processed twice or not at all: {new}"
    pending = rcluster.redis_cli("XPENDING", "GREETING_CHANNEL_OUTBOUND", "greeting-service").splitlines()
    wait_until(lambda: rcluster.redis_cli("XPENDING", "GREETING_CHANNEL_OUTBOUND", "greeting-service").splitlines()[0] == "0",
               10, what=f"nothing pending (was {pending})")


def test_wildcard_subscribe_is_refused_with_an_explanation(rcluster, clients):
    c = clients(rcluster.client())
    c.send_frame("SUBSCRIBE", {"destination": "/topic/prices.*", "id": "w", "receipt": "rw"})
    err = c.expect_error(closes=False)
    text = (err.get("message", "") + " " + err.text).lower()
    assert "cluster" in text and "wildcard" in text, f"ERROR does not explain: {err.headers} {err.text!r}"


# -- the seeds' manual tests on the cluster ---------------------------------------------------

def test_seed_curl_api_post_through_load_balancer(seed_cluster, clients):
    subs = [clients(seed_cluster.client()) for _ in range(3)]
    for n, c in enumerate(subs):
        c.subscribe("/topic/toast", id="t", receipt=f"r{n}")
    out = subprocess.run(["curl", "-s", "-X", "POST", "-d", '{"topic": "/topic/toast", "message": "testing API endpoint" }',
                          "-H", "Content-Type: application/json", f"127.0.0.1:{seed_cluster.lb_port}/api/notification"],
                         capture_output=True, text=True, timeout=10)
    assert '"id"' in out.stdout, out.stdout
    for c in subs:
        f = c.expect_message(10)
        assert f.text == "testing API endpoint" and f["content-type"] == "text/plain"


def test_seed_redis_cli_publish_broadcast_and_event_stream(seed_cluster, clients):
    """Test #2: a backend PUBLISHes on GREETING_CHANNEL_INBOUND (redis-cli -c, any node),
    BROADCAST-CHANNEL, and XADDs to TEST_EVENT_TO_WEBSOCKET_SERVER: subscribers on every
    instance get each once, stream entries in order."""
    subs = [clients(seed_cluster.client(seed_cluster.gw_ws(i))) for i in range(3)]
    for c in subs:
        c.subscribe("/topic/greetings", id="g", receipt="rg")
        c.subscribe("/topic/events", id="e", receipt="re")
    seed_cluster.redis_cli("PUBLISH", "GREETING_CHANNEL_INBOUND", '"Test Message from Backend PubSub"')
    for c in subs:
        assert c.expect_message(10).text == '"Test Message from Backend PubSub"'
    seed_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", '{"topic": "/topic/events", "message": "from broadcast"}')
    for c in subs:
        assert c.expect_message(10).text == "from broadcast"
    for i in range(20):
        seed_cluster.redis_cli("XADD", "TEST_EVENT_TO_WEBSOCKET_SERVER", "*", "topic", "/topic/events", "message", f"e{i}")
    for c in subs:
        assert [c.expect_message(10).text for _ in range(20)] == [f"e{i}" for i in range(20)]
        c.expect_nothing(0.3)


def test_seed_send_to_app_greet_answered_by_a_replica(seed_cluster, clients):
    """Test #3: a browser's SEND to /app/greet goes to the GREETING_CHANNEL_OUTBOUND stream, a
    greeting-service replica answers on /topic/greetings."""
    watcher = clients(seed_cluster.client())
    watcher.subscribe("/topic/greetings", id="g", receipt="r")
    sender = clients(seed_cluster.client())
    sender.send("/app/greet", "seed", headers={"x-msg-id": "seed-1"}, receipt="s")
    f = watcher.expect_message(15)
    assert (f.text, f["x-msg-id"]) == ("Hello, seed!", "seed-1")
    assert "seed" in seed_cluster.redis_cli("XREVRANGE", "GREETING_CHANNEL_OUTBOUND", "+", "-", "COUNT", "1")


# -- TLS and an ACL user on every node ---------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TLSFiles(tmp_path_factory.mktemp("redis-cluster-tls"))


def test_tls_and_acl_user_on_every_node(cluster_factory, clients, tls):
    """Every node TLS only (bus and replication too), client certificates required (mTLS), and
    only the ACL user `app`: two gateways
    (rediss://app:…@) deliver across instances on destinations of every shard, a
    greeting-service replica answers /app/greet, and the gateways' connections on every
    primary are the user's."""
    cluster = cluster_factory(replicas=1, gateways=2, config_yaml=cluster_config(),
                              redis_cluster={"tls": tls, "mtls": True, "user": ("app", "app-secret")})
    rc = cluster.rc
    dests = spread(rc, "/topic/rc-tls-", 1)
    sub = clients(cluster.client(cluster.gw_ws(0)))
    for k, d in enumerate(dests):
        sub.subscribe(d, id=str(k), receipt=f"r{k}")
    for d in dests:
        r = requests.post(f"{cluster.gw_url(1)}/api/notification", json={"topic": d, "message": f"over tls {d}"}, timeout=5)
        assert r.status_code == 200, r.text
    got = collect_by_destination(sub, len(dests))
    assert {d: [f.text for f in frames] for d, frames in got.items()} == {d: [f"over tls {d}"] for d in dests}
    for p in rc.primaries():
        listing = rc.cli(p, "CLIENT", "LIST")
        ours = [l for l in listing.splitlines() if "name=switchboard-gw" in l]
        assert ours and all("user=app" in l for l in ours), f"redis{p.index}: {listing}"
    sub.subscribe("/topic/greetings", id="g", receipt="rg")
    clients(cluster.client(cluster.gw_ws(1))).send("/app/greet", "tls", receipt="s")
    assert sub.expect_message(15).text == "Hello, tls!", f"no greeting; see {cluster.name}-replica0.log"


def run_gateway(*sets, timeout=30):
    """Runs the gateway with `sets` and expects it to stop by itself; (exit code, output)."""
    args = [BINARY, "--port", "0", "--set", "redis.connect-timeout-ms=10000"]  # a TLS handshake under load takes seconds
    for s in sets:
        args += ["--set", s]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the gateway was still running {timeout} s after start ({sets}); output:\n"
                             f"{(exc.stdout or b'')[-2000:]!r}\n{(exc.stderr or b'')[-2000:]!r}") from None
    return out.returncode, out.stdout + out.stderr


def test_wrong_ca_is_refused_at_start_up(cluster_factory, tls):
    cluster = cluster_factory(replicas=0, gateways=1, config_yaml=cluster_config(),
                              redis_cluster={"tls": tls, "user": ("app", "app-secret")})
    rc = cluster.rc
    code, output = run_gateway(f"redis.url=rediss://app:app-secret@127.0.0.1:{rc.nodes[0].port}", f"redis.cluster.nodes={rc.seeds}",
                               f"redis.tls.ca-file={tls.other_ca}", f"redis.tls.cert-file={tls.client}",
                               f"redis.tls.key-file={tls.client_key}")
    assert code != 0, output
    assert "not signed by a trusted CA" in output, output
    assert "redis.cluster.nodes" in output or "redis.tls.ca-file" in output, f"the error names no key:\n{output}"


# -- bad configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["unreachable seed", "not host:port", "database 3", "with sentinels"])
def test_bad_cluster_configuration_is_a_start_up_error_naming_the_key(case):
    seed = f"redis.cluster.nodes=127.0.0.1:{free_port()}"
    sets = {
        "unreachable seed": ["redis.url=redis://127.0.0.1:1", seed],
        "not host:port": ["redis.url=redis://127.0.0.1:1", "redis.cluster.nodes=127.0.0.1"],
        "database 3": ["redis.url=redis://127.0.0.1:1/3", seed],
        "with sentinels": ["redis.url=redis://127.0.0.1:1", seed, f"redis.sentinel.nodes=127.0.0.1:{free_port()}",
                           "redis.sentinel.master-name=main"],
    }[case]
    code, output = run_gateway(*sets)
    assert code != 0 and "redis.cluster.nodes" in output, output


def test_non_cluster_server_given_as_a_cluster_is_a_start_up_error(tmp_path):
    port = free_port()
    proc = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True).stdout.strip() == "PONG",
                   what="redis-server")
        code, output = run_gateway(f"redis.url=redis://127.0.0.1:{port}", f"redis.cluster.nodes=127.0.0.1:{port}")
        assert code != 0 and "redis.cluster.nodes" in output, output
        assert "cluster" in output.lower()
    finally:
        terminate(proc)


def test_lifecycle_events_on_a_cluster_are_refused_at_start_up(rcluster):
    rc = rcluster.rc
    code, output = run_gateway(f"redis.url=redis://127.0.0.1:{rc.nodes[0].port}", f"redis.cluster.nodes={rc.seeds}",
                               "events.enabled=true")
    assert code != 0 and "events.enabled" in output, output
