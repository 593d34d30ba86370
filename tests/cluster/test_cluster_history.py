"""History in Redis mode, under faults, with real processes: a gateway killed with kill -9, Redis
restarted without persistence, the instances' Pub/Sub connections killed (CLIENT KILL). Each
test counts loss, duplicates and reorders per client and asserts zero, or the explicit signal
(`x-recovered: false`, a jump in `x-position`)."""
import contextlib
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from support.cluster import Cluster
from support.paths import ARTIFACTS
from support.history import Publisher, audit, drain
from support.process import wait_until
from support.rawws import OP_TEXT, RawWebSocket, build_frame, stomp_frames, upgrade_request
from support.sockets import tcp_queue_bytes
from support.stompclient import ConnectionClosed, StompClient


@pytest.mark.parametrize("redis_cluster", [None, {}], ids=["redis", "redis-cluster"])
def test_kill9_gateway_clients_resume_through_haproxy_without_loss(cluster_factory, redis_cluster):
    """On one Redis, and on a Redis Cluster (3 primaries + 3 replicas)."""
    cluster = cluster_factory(replicas=0, redis_cluster=redis_cluster)
    cluster.wait_all_up()  # round-robin reaches gw1 only once haproxy sees it up
    topic = "/topic/h-kill"
    subs = []
    for _ in range(6):
        c = cluster.client()
        c.subscribe(topic, id="1", receipt="r")
        subs.append(c)
    victims = [c for c in subs if Cluster.instance_of(c) == "gw1"]
    assert victims, "no client on gw1"
    received = {id(c): [] for c in subs}
    positions = {}
    pub = Publisher(cluster.lb_url, topic)
    pub.start()
    wait_until(lambda: len(pub.answered) >= 30, what="publishing")
    # Everyone reads a little, then gw1 dies under them.
    for c in subs:
        bodies, positions[id(c)] = drain(c, lambda b: len(b) >= 10)
        received[id(c)] += bodies
    cluster.kill_gateway(1)
    for c in victims:
        assert c.wait_closed(5)
    # A victim keeps what it read before its socket died, then resumes on another instance.
    resumed = []
    for c in victims:
        nc = wait_until(cluster.client, 15, 0.2, what="a reconnection through haproxy")
        assert Cluster.instance_of(nc) != "gw1"
        receipt = nc.subscribe(topic, id="1", receipt="r", **{"x-resume-from": positions[id(c)]})
        assert receipt["x-recovered"] == "true", receipt.headers
        received[id(nc)] = received.pop(id(c))
        resumed.append(nc)
    wait_until(lambda: len(pub.answered) >= 150, 30, what="publishing after the kill")
    pub.finish()
    survivors = [c for c in subs if c not in victims] + resumed
    last = pub.answered[-1]
    for c in survivors:
        bodies, _ = drain(c, lambda b: last in b or (b and b[-1] >= last), timeout=20)
        received[id(c)] += bodies
    for c in survivors:
        # Received before the kill (or while reading) plus after: every answered publish once, in order.
        lost, dups, reorders = audit([b for b in received[id(c)] if b <= last], pub.answered)
        assert (lost, dups, reorders) == ([], 0, 0), f"{Cluster.instance_of(c)}: lost {lost[:10]}, {dups} dups, {reorders} reorders"
        c.close()


def test_redis_restart_without_persistence_says_not_recovered(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=2)
    topic = "/topic/h-restart"
    sub = clients(cluster.client(cluster.gw_ws(0)))
    receipt = sub.subscribe(topic, id="1", receipt="r")
    for i in range(3):
        requests.post(f"{cluster.gw_url(1)}/api/notification", json={"topic": topic, "message": str(i)}).raise_for_status()
    frames = [sub.expect_message() for _ in range(3)]
    assert [f.text for f in frames] == ["0", "1", "2"]
    old = frames[-1]["x-position"]
    epoch, seq = old.rsplit(":", 1)
    assert seq == "3" and receipt["x-position"] == f"{epoch}:0"
    # A client that left at message 2 resumes it while the history is there...
    other = clients(cluster.client(cluster.gw_ws(1)))
    got = other.subscribe(topic, id="1", receipt="r", **{"x-resume-from": frames[1]["x-position"]})
    assert got["x-recovered"] == "true" and other.expect_message().text == "2"

    cluster.kill_redis()
    cluster.start_redis()  # empty: no persistence in the tests' Redis
    for i in range(2):
        cluster.wait_ready(i, timeout=20)
    # ...and is told plainly when it cannot: the history is a new one.
    late = clients(cluster.client(cluster.gw_ws(1)))
    got = late.subscribe(topic, id="1", receipt="r", **{"x-resume-from": old})
    assert got["x-recovered"] == "false"
    assert got["x-position"].rsplit(":", 1)[0] != epoch
    requests.post(f"{cluster.gw_url(1)}/api/notification", json={"topic": topic, "message": "after"}).raise_for_status()
    for c in (sub, late):
        f = c.expect_message(10)
        assert f.text == "after" and f["x-position"].endswith(":1") and not f["x-position"].startswith(epoch)


@contextlib.contextmanager
def pubsub_held_off(cluster, gateway):
    """Kills `gateway`'s Pub/Sub connections and keeps them from coming back (a password that
    its reconnects lack) until the block ends; yields the redis-cli arguments that pass it."""
    ps = cluster.redis_cli("CLIENT", "LIST", "TYPE", "pubsub").splitlines()
    ids = [l.split()[0].split("=")[1] for l in ps if f"name=switchboard-{gateway}" in l]
    assert ids, ps
    cluster.redis_cli("CONFIG", "SET", "requirepass", "pw")
    auth = ("--no-auth-warning", "-a", "pw")
    try:
        for client_id in ids:
            cluster.redis_cli(*auth, "CLIENT", "KILL", "ID", client_id)
        yield auth
    finally:
        cluster.redis_cli(*auth, "CONFIG", "SET", "requirepass", "")


def test_a_new_epoch_while_an_instance_was_away_reaches_its_subscribers_whole(cluster_factory, clients):
    """History starts a new epoch (FLUSHALL, as after Redis restarted empty) while gw1's Pub/Sub
    connection is down (held off by a password). Its connected subscriber then gets every
    message of the new epoch from history, in order: before, those up to its old position were
    skipped as lost. A client that read the new epoch on gw0 resumes on gw1 before gw1 has heard
    of it, and gets the rest, recovered: before, x-recovered:false and no replay."""
    cluster = cluster_factory(replicas=0, gateways=2)
    topic = "/topic/h-epoch"
    live = clients(cluster.client(cluster.gw_ws(1)))
    live.subscribe(topic, id="1", receipt="r")
    for i in range(8):
        publish(cluster, topic, f"old-{i}")
    old = [live.expect_message() for _ in range(8)]
    assert [f.text for f in old] == [f"old-{i}" for i in range(8)]
    epoch = old[-1]["x-position"].rsplit(":", 1)[0]
    with pubsub_held_off(cluster, "gw1") as auth:
        cluster.redis_cli(*auth, "FLUSHALL")
        reader = clients(cluster.client(cluster.gw_ws(0)))
        reader.subscribe(topic, id="1", receipt="r")
        for i in range(10):
            publish(cluster, topic, f"new-{i}")
        new = [reader.expect_message() for _ in range(10)]
        assert new[0]["x-position"].rsplit(":", 1)[0] != epoch
        resumed = clients(cluster.client(cluster.gw_ws(1)))
        got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": new[4]["x-position"]})
        assert got["x-recovered"] == "true", got.headers
        assert [resumed.expect_message().text for _ in range(5)] == [f"new-{i}" for i in range(5, 10)]
    publish(cluster, topic, "new-10")
    bodies = [live.expect_message(15).text for _ in range(11)]
    assert bodies == [f"new-{i}" for i in range(11)]
    assert resumed.expect_message(15).text == "new-10"
    resumed.expect_nothing(0.3)
    live.expect_nothing(0.3)


def test_a_resume_across_a_hole_beyond_the_instances_position_is_not_recovered(cluster_factory, clients):
    """History jumped ahead of where the instance stands (a failover's +1,000,000: the
    promoted replica had not seen the last writes) while its Pub/Sub connection was away. A
    client resuming there got x-recovered:true, judged only up to the instance's position,
    then a jump in x-position. The hole beyond it is a loss: false now."""
    cluster = cluster_factory(replicas=0, gateways=1)
    topic = "/topic/h-hole"
    _, frames = live_then_published(cluster, clients, topic)
    with pubsub_held_off(cluster, "gw0") as auth:
        key = "switchboard:{" + topic + "}"
        cluster.redis_cli(*auth, "HINCRBY", key + ":seq", "n", "1000000")
        cluster.redis_cli(*auth, "FCALL", "switchboard_publish", "1", key, "after the hole")
        resumed = clients(cluster.client(cluster.gw_ws(0)))
        got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": frames[2]["x-position"]})
        assert got["x-recovered"] == "false", got.headers
        assert [resumed.expect_message().text for _ in range(2)] == ["m3", "m4"]


def test_a_redis_restart_from_an_older_snapshot_is_a_hole_subscribers_are_told_of(cluster_factory, clients):
    """Redis killed and restarted from an RDB snapshot older than its last writes (its default
    persistence): the positions issued after the snapshot were issued again to new messages,
    which every subscriber dropped as copies, silently, and a resume across them said
    x-recovered:true (a probe). Now the sequence moves past them: the new messages arrive after
    a jump in x-position, and a resume from before the restart is not recovered."""
    cluster = cluster_factory(replicas=0, gateways=1)
    topic = "/topic/h-snapshot"
    live = clients(cluster.client(cluster.gw_ws(0)))
    live.subscribe(topic, id="1", receipt="r")
    for i in range(3):
        publish(cluster, topic, f"m{i}")
    cluster.redis_cli("SAVE")
    for i in range(3, 6):  # not in the snapshot
        publish(cluster, topic, f"m{i}")
    frames = [live.expect_message() for _ in range(6)]
    cluster.kill_redis()
    cluster.start_redis()
    cluster.wait_ready(0, timeout=30)
    wait_until(lambda: requests.post(f"{cluster.gw_url(0)}/api/notification",
                                     json={"topic": topic, "message": "after"}, timeout=5).status_code == 200,
               20, what="a publish after the restart")
    after = live.expect_message(10)
    assert after.text == "after"
    epoch, last = frames[-1]["x-position"].rsplit(":", 1)
    new_epoch, sequence = after["x-position"].rsplit(":", 1)
    assert new_epoch == epoch and int(sequence) > int(last) + 1_000_000 - 10, after.headers
    resumed = clients(cluster.client(cluster.gw_ws(0)))
    got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": frames[-1]["x-position"]})
    assert got["x-recovered"] == "false", got.headers
    assert got["x-position"] == after["x-position"], got.headers


def test_a_resume_ahead_of_the_instance_before_a_hole_is_not_recovered(cluster_factory, clients):
    """The client saw a message this instance has not (its Pub/Sub connection away), and after
    it history jumped (a failover's +1,000,000): resuming here from that message, it got
    x-recovered:true, judged only up to its own position. The hole after it is a loss: false."""
    cluster = cluster_factory(replicas=0, gateways=1)
    topic = "/topic/h-ahead-hole"
    _, frames = live_then_published(cluster, clients, topic)
    epoch, newest = frames[-1]["x-position"].rsplit(":", 1)
    with pubsub_held_off(cluster, "gw0") as auth:
        key = "switchboard:{" + topic + "}"
        cluster.redis_cli(*auth, "FCALL", "switchboard_publish", "1", key, "seen elsewhere")
        cluster.redis_cli(*auth, "HINCRBY", key + ":seq", "n", "1000000")
        cluster.redis_cli(*auth, "FCALL", "switchboard_publish", "1", key, "after the hole")
        resumed = clients(cluster.client(cluster.gw_ws(0)))
        got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": f"{epoch}:{int(newest) + 1}"})
        assert got["x-recovered"] == "false", got.headers
    assert resumed.expect_message(15).text == "after the hole"


@pytest.mark.parametrize("ahead", [1, 10, 2**64 - 1 - 5])
def test_a_resume_ahead_of_history_is_not_recovered_and_gets_what_follows(cluster_factory, clients, ahead):
    """A position beyond history's newest (a client's bug, or a position of a history since
    lost): nothing to replay, x-recovered:false, and the next messages arrive. The subscription
    stayed parked at the client's position and got nothing until the destination got there."""
    cluster = cluster_factory(replicas=0, gateways=1)
    topic = "/topic/h-ahead"
    live = clients(cluster.client(cluster.gw_ws(0)))
    live.subscribe(topic, id="1", receipt="r")
    for i in range(5):
        publish(cluster, topic, f"m{i}")
    last = [live.expect_message() for _ in range(5)][-1]["x-position"]
    epoch, newest = last.rsplit(":", 1)
    resumed = clients(cluster.client(cluster.gw_ws(0)))
    got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": f"{epoch}:{int(newest) + ahead}"})
    assert got["x-recovered"] == "false", got.headers
    assert got["x-position"] == last, got.headers
    publish(cluster, topic, "next")
    message = resumed.expect_message()
    assert message.text == "next" and message["x-position"] == f"{epoch}:{int(newest) + 1}"


def test_a_publish_redis_refuses_says_refused_not_unavailable(cluster_factory, clients):
    """Redis at maxmemory refuses writes (OOM): the 503 says so; it said "redis unavailable",
    an outage, though Redis answered."""
    cluster = cluster_factory(replicas=0, gateways=1)
    cluster.redis_cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    cluster.redis_cli("CONFIG", "SET", "maxmemory", "1")
    try:
        r = requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/h-oom", "message": "m"}, timeout=10)
    finally:
        cluster.redis_cli("CONFIG", "SET", "maxmemory", "0")
    assert r.status_code == 503, r.text
    assert r.json()["error"].startswith("publish failed: redis refused it (") and "OOM" in r.json()["error"], r.text
    assert r.json()["error"].endswith("; not published"), r.text


def position_then_backlog(cluster, clients, topic, count):
    """Publishes m0 … m<count-1> to `topic` (m<i> at position i + 1); returns m0's position."""
    live = clients(cluster.client(cluster.gw_ws(0)))
    live.subscribe(topic, id="1", receipt="r")
    publish(cluster, topic, "m0")
    first = live.expect_message()["x-position"]
    with requests.Session() as http:
        for i in range(1, count):
            http.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": topic, "message": f"m{i}"}).raise_for_status()
    return first


def test_a_resume_far_behind_is_read_in_pages_and_arrives_whole(cluster_factory, clients):
    """A resume 700 messages behind: history is read in pages of 256 (one reply held the whole
    backlog, which held up every command behind it past its timeout); the client gets all of
    them once, in order, then the live ones."""
    cluster = cluster_factory(replicas=0, gateways=1, gateway_args=("--set", "history.max-length=2000"))
    topic = "/topic/h-far"
    first = position_then_backlog(cluster, clients, topic, 700)
    def fcalls():
        stats = cluster.redis_cli("INFO", "commandstats")
        return int(re.search(r"cmdstat_fcall:calls=(\d+)", stats).group(1))
    before = fcalls()
    resumed = clients(cluster.client(cluster.gw_ws(0)))
    got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": first})
    assert got["x-recovered"] == "true", got.headers
    # 699 entries: three reads of at most 256 (one read of all before).
    assert fcalls() - before >= 3
    publish(cluster, topic, "m700")
    bodies = [resumed.expect_message(timeout=20).text for _ in range(700)]
    assert bodies == [f"m{i}" for i in range(1, 701)]
    resumed.expect_nothing(0.3)


def test_a_resume_past_a_long_trimmed_stretch_reads_bounded_pages(cluster_factory, clients):
    """A resume from long ago: 11,000 trimmed positions, then the 5,000 kept. Empty pages
    doubled their span without end, and the first one reaching the kept ones read all 5,000 in
    one reply again. An empty page now says where the next entry is, a page spans at most 4,096
    positions, and the messages arrive whole."""
    kept = 5000
    cluster = cluster_factory(replicas=0, gateways=1, gateway_args=("--set", f"history.max-length={kept}"))
    topic = "/topic/h-trimmed"
    live = clients(cluster.client(cluster.gw_ws(0)))
    live.subscribe(topic, id="1", receipt="r")
    publish(cluster, topic, "m0")
    first = live.expect_message()["x-position"]
    total = 16000
    with requests.Session() as http:
        for start in range(1, total, 1000):
            batch = [{"topic": topic, "message": f"m{i}"} for i in range(start, min(start + 1000, total))]
            http.post(f"{cluster.gw_url(0)}/api/notifications", json=batch).raise_for_status()
    monitor_log = ARTIFACTS / f"{cluster.name}-monitor.log"
    with open(monitor_log, "wb") as out:
        monitor = subprocess.Popen(["redis-cli", "-p", str(cluster.redis_port), "MONITOR"], stdout=out)
        try:
            wait_until(lambda: b"OK" in monitor_log.read_bytes(), 10, what="MONITOR")
            resumed = clients(cluster.client(cluster.gw_ws(0)))
            got = resumed.subscribe(topic, id="1", receipt="r", **{"x-resume-from": first})
            assert got["x-recovered"] == "false", got.headers  # the trimmed stretch is gone
            bodies = [resumed.expect_message(timeout=20).text]
            while bodies[-1] != f"m{total - 1}":
                bodies.append(resumed.expect_message(timeout=20).text)
        finally:
            monitor.terminate()
            monitor.wait(timeout=10)
    # Trimmed with MAXLEN ~: at least the last 5,000 are kept; they arrive in order, each once.
    numbers = [int(b[1:]) for b in bodies]
    assert len(numbers) >= kept and numbers == list(range(numbers[0], total)), numbers[:5]
    reads = [(int(a), int(b)) for a, b in re.findall(r'"switchboard_read" "\d+" (?:"[^"]*" )*?"after" "(\d+)" "(\d+)"', monitor_log.read_text(errors="replace"))]
    assert reads, "the reads were seen"
    assert max(b - a for a, b in reads) <= 4096, f"a read spanned {max(b - a for a, b in reads)} positions"
    # m<i> is at position i + 1: the first page says where the first kept entry is, and the
    # next read starts there (the stretch was read page by page, in doubling spans).
    first_kept = numbers[0] + 1
    assert len([1 for a, b in reads if b < first_kept]) == 1, reads[:8]


@pytest.mark.parametrize("policy,warned", [("allkeys-lru", True), ("noeviction", False)])
def test_an_evicting_redis_is_named_at_start(cluster_factory, policy, warned):
    """Redis may evict keys (maxmemory-policy other than noeviction): streams, groups and
    histories would vanish under memory pressure, receipted messages with them. Said at start."""
    cluster = cluster_factory(replicas=0, gateways=1, redis_args=("--maxmemory-policy", policy))
    log = ARTIFACTS / f"{cluster.name}-gw0.log"
    line = "redis may evict keys under memory pressure"
    if warned:
        wait_until(lambda: line in log.read_text(errors="replace"), 15, what="the eviction warning")
        assert f"maxmemory-policy={policy}" in log.read_text(errors="replace")
    else:
        wait_until(lambda: "maxmemory-policy=noeviction" in log.read_text(errors="replace"), 15, what="the policy checked")
        assert line not in log.read_text(errors="replace")


def test_pubsub_connections_killed_gap_repaired_from_history(cluster_factory, clients):
    """CLIENT KILL TYPE pubsub drops every instance's subscriber connection while messages flow:
    what Pub/Sub lost meanwhile comes from history, in order, once."""
    cluster = cluster_factory(replicas=0, gateways=2)
    topic = "/topic/h-gap"
    subs = [clients(cluster.client(cluster.gw_ws(i % 2))) for i in range(4)]
    for c in subs:
        c.subscribe(topic, id="1", receipt="r")
    pub = Publisher(cluster.gw_url(1), topic, pace=0.002)
    pub.start()
    wait_until(lambda: len(pub.answered) >= 50, what="publishing")
    for _ in range(3):
        before = len(pub.answered)
        killed = cluster.redis_cli("CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 2
        wait_until(lambda: len(pub.answered) >= before + 40, 20, what="publishing after the kill")
    pub.finish()
    last = pub.answered[-1]
    for c in subs:
        bodies, _ = drain(c, lambda b: bool(b) and b[-1] >= last, timeout=20)
        lost, dups, reorders = audit([b for b in bodies if b <= last], pub.answered)
        assert (lost, dups, reorders) == ([], 0, 0), f"lost {lost[:10]}, {dups} dups, {reorders} reorders"
    # Each instance read history after its subscriber connection came back.
    for i in range(2):
        lines = [l for l in requests.get(f"{cluster.gw_url(i)}/metrics").text.splitlines()
                 if l.startswith("switchboard_history_repairs_total")]
        assert lines and float(lines[0].split()[-1]) >= 3, lines


def test_redis_cli_function_and_inbound_routes_record_once(cluster_factory, clients):
    cluster = cluster_factory(replicas=0)
    subs = [clients(cluster.client(cluster.gw_ws(i))) for i in range(3)]
    for c in subs:
        c.subscribe("/topic/greetings", id="1", receipt="r")
    # A backend with redis-cli: the function records and publishes.
    cluster.redis_cli("FCALL", "switchboard_publish", "1", "switchboard:{/topic/greetings}", "from cli")
    # Every instance reads the inbound channel and the inbound stream; each message is recorded once.
    cluster.redis_cli("PUBLISH", "GREETING_CHANNEL_INBOUND", "ping")
    cluster.redis_cli("PUBLISH", "GREETING_CHANNEL_INBOUND", "ping")
    cluster.redis_cli("XADD", "TEST_EVENT_TO_WEBSOCKET_SERVER", "*", "topic", "/topic/greetings", "message", "from stream")
    for c in subs:
        frames = [c.expect_message(10) for _ in range(4)]
        assert sorted(f.text for f in frames) == ["from cli", "from stream", "ping", "ping"]
        assert [int(f["x-position"].rsplit(":", 1)[1]) for f in frames] == [1, 2, 3, 4]
        c.expect_nothing(0.3)
    assert cluster.redis_cli("HGET", "switchboard:{/topic/greetings}:seq", "n") == "4"
    assert cluster.redis_cli("XLEN", "switchboard:{/topic/greetings}:log") == "4"


def publish(cluster, topic, message, gateway=0):
    requests.post(f"{cluster.gw_url(gateway)}/api/notification", json={"topic": topic, "message": message}).raise_for_status()


def live_then_published(cluster, clients, topic, count=5):
    """A subscriber of `topic` on gw0, and the frames of m0 … m<count-1> published to it, as
    it got them."""
    live = clients(cluster.client(cluster.gw_ws(0)))
    live.subscribe(topic, id="1", receipt="r")
    for i in range(count):
        publish(cluster, topic, f"m{i}")
    return live, [live.expect_message() for _ in range(count)]


def subscribing_while_redis_is_down(cluster, clients, topic, published=1, resume_after=0):
    """A subscriber of `topic` gets `published` messages; Redis is killed; then one client
    SUBSCRIBEs resuming after message `resume_after` and another to `<topic>-new`. Returns the
    subscriber, its frames, the resuming client, the newcomer and when their frames were sent."""
    sub = clients(cluster.client(cluster.gw_ws(0)))
    sub.subscribe(topic, id="1", receipt="r")
    for i in range(published):
        publish(cluster, topic, str(i))
    frames = [sub.expect_message() for _ in range(published)]
    assert [f.text for f in frames] == [str(i) for i in range(published)]
    cluster.kill_redis()
    resuming = clients(cluster.client(cluster.gw_ws(0)))
    newcomer = clients(cluster.client(cluster.gw_ws(0)))
    sent = time.monotonic()
    resuming.send_frame("SUBSCRIBE", {"destination": topic, "id": "1", "receipt": "r", "x-resume-from": frames[resume_after]["x-position"]})
    newcomer.send_frame("SUBSCRIBE", {"destination": f"{topic}-new", "id": "1", "receipt": "r"})
    return sub, frames, resuming, newcomer, sent


def test_subscribe_while_redis_restarts_waits_for_it(cluster_factory, clients):
    """A phone reconnecting during a Redis restart (AOF on): its SUBSCRIBE waits for Redis
    (`redis.unreachable-wait-ms`) instead of failing, then resumes with no gap; a SUBSCRIBE to a
    destination new to the instance waits too, then gets what is published next."""
    # A wait far longer than the restart, so that a slow machine cannot fail the test.
    cluster = cluster_factory(replicas=0, gateways=1, redis_args=["--appendonly", "yes", "--appendfsync", "always"],
                              gateway_args=("--set", "redis.unreachable-wait-ms=30000", "--set", "redis.appendfsync-always=true"))
    topic, fresh = "/topic/h-outage", "/topic/h-outage-new"
    sub, _, resuming, newcomer, _ = subscribing_while_redis_is_down(cluster, clients, topic, published=3, resume_after=0)
    # Both wait (no ERROR) while Redis is away...
    resuming.expect_nothing(0.5)
    newcomer.expect_nothing(0.1)
    cluster.start_redis()
    # ...and go on once it is back: the resume is complete, then live messages follow once each.
    got = resuming.expect_receipt("r", timeout=10)
    assert got["x-recovered"] == "true", got.headers
    assert [resuming.expect_message().text for _ in range(2)] == ["1", "2"]
    newcomer.expect_receipt("r", timeout=10)
    publish(cluster, topic, "3")
    publish(cluster, fresh, "first")
    assert sub.expect_message(10).text == "3" and resuming.expect_message(10).text == "3"
    assert newcomer.expect_message(10).text == "first"
    for c in (sub, resuming, newcomer):
        c.expect_nothing(0.3)


@pytest.mark.parametrize("wait_ms", [0, 600])
def test_subscribe_while_redis_stays_down_fails_after_the_wait(cluster_factory, clients, wait_ms):
    """Past `redis.unreachable-wait-ms` (or at once with 0) a SUBSCRIBE that needs Redis gets an
    ERROR that says so: a resume (its replay is read there) and a destination new to the instance."""
    cluster = cluster_factory(replicas=0, gateways=1, gateway_args=("--set", f"redis.unreachable-wait-ms={wait_ms}"))
    topic = "/topic/h-down"
    sub, _, resuming, newcomer, sent = subscribing_while_redis_is_down(cluster, clients, topic)
    for c in (resuming, newcomer):
        error = c.expect_error(timeout=10)
        # The gateway waited (its clock starts after the frame was sent).
        assert time.monotonic() - sent >= wait_ms / 1000
        assert "SUBSCRIBE to /topic/h-down" in error["message"], error.headers
        if wait_ms:
            assert f"redis unreachable for {wait_ms} ms" in error["message"], error.headers
        else:
            assert "notConnected" in error["message"], error.headers
    # The session already subscribed is not harmed.
    sub.expect_nothing(0.1)
    cluster.start_redis()
    cluster.wait_ready(0)
    publish(cluster, topic, "1")
    assert sub.expect_message(10).text == "1"


def test_sigterm_while_subscribes_wait_for_redis(cluster_factory, clients):
    """SIGTERM while SUBSCRIBEs wait for an unreachable Redis: past the grace the drain closes
    their sessions with the ERROR (no receipt), the waits end, and the gateway exits 0 without
    touching a stopped event loop (checked on its log when the cluster stops)."""
    cluster = cluster_factory(replicas=0, gateways=1, gateway_args=(
        "--set", "redis.unreachable-wait-ms=60000", "--set", "server.shutdown-grace-ms=500", "--set", "server.drain-delay-ms=0"))
    _, _, resuming, newcomer, _ = subscribing_while_redis_is_down(cluster, clients, "/topic/h-term")
    resuming.expect_nothing(0.3)
    assert cluster.stop_one("gw0") == 0
    for c in (resuming, newcomer):
        c.expect_error("server shutting down, reconnect")


def parse_stomp(frame: bytes) -> tuple[str, dict, str]:
    head, _, body = frame.partition(b"\n\n")
    lines = head.decode().split("\n")
    def unescape(v):
        return re.sub(r"\\(.)", lambda m: {"c": ":", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], v)
    return lines[0], {k: unescape(v) for k, v in (line.split(":", 1) for line in lines[1:])}, body.decode()


def test_a_resume_on_an_instance_behind_the_client_sends_nothing_twice(cluster_factory, clients):
    """The client read further on gw0 than gw1 has delivered (gw1 frozen while 300 messages
    were published) and resumes on gw1 as it wakes up: the SUBSCRIBE is registered at gw1's
    own position, and the live copies up to the client's position that reached gw1 while the
    replay was read went out again after RECEIPT x-recovered:true (a probe: 12-813 copies in
    15-60 % of runs). The SUBSCRIBE is in gw1's socket before it wakes, so it races gw1's
    catching up every round. Never a message twice, none missing, for the resumed client and
    for gw1's own subscriber."""
    cluster = cluster_factory(replicas=0, gateways=2)
    port = int(cluster.gw_ws(1).rsplit(":", 1)[1].split("/")[0])
    for round in range(3):
        topic = f"/topic/h-behind-{round}"
        reader = clients(cluster.client(cluster.gw_ws(0)))
        reader.subscribe(topic, id="1", receipt="r")
        follower = clients(cluster.client(cluster.gw_ws(1)))
        follower.subscribe(topic, id="1", receipt="r")
        publish(cluster, topic, "m0")
        assert reader.expect_message().text == "m0" and follower.expect_message().text == "m0"
        gw1 = cluster.procs["gw1"]
        os.kill(gw1.pid, signal.SIGSTOP)
        try:
            batch = [{"topic": topic, "message": f"m{i}"} for i in range(1, 301)]
            requests.post(f"{cluster.gw_url(0)}/api/notifications", json=batch, timeout=20).raise_for_status()
            last = [reader.expect_message() for _ in range(300)][-1]["x-position"]
            raw = RawWebSocket(port, handshake=False)
            raw.send_bytes(upgrade_request(port)
                           + build_frame(OP_TEXT, b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\x00")
                           + build_frame(OP_TEXT, f"SUBSCRIBE\ndestination:{topic}\nid:0\nreceipt:r1\nx-resume-from:{last}\n\n\x00".encode()))
            wait_until(lambda: tcp_queue_bytes(port, "rx") > 0, what="the resume waiting in gw1's socket")
        finally:
            os.kill(gw1.pid, signal.SIGCONT)
        for i in range(301, 311):
            publish(cluster, topic, f"m{i}")
        assert b" 101 " in raw._read_until(b"\r\n\r\n", 10)
        frames = []
        while sum(1 for f in frames if f[0] == "MESSAGE") < 10:
            _, op, payload = raw.recv_frame(10)
            frames += [parse_stomp(f) for f in stomp_frames([(op, payload)])]
        with pytest.raises(TimeoutError):
            raw.recv_frame(0.3)
        raw.close()
        assert [f[0] for f in frames[:2]] == ["CONNECTED", "RECEIPT"], frames[:2]
        # Where the destination stands on gw1 by then: the client's position, or further when
        # gw1 had caught up first (the replay then brings the rest).
        epoch, seq = frames[1][1]["x-position"].rsplit(":", 1)
        assert frames[1][1].get("x-recovered") == "true" and epoch == last.rsplit(":", 1)[0] and int(seq) >= 301, frames[1]
        assert [f[2] for f in frames[2:]] == [f"m{i}" for i in range(301, 311)], [f[2] for f in frames[2:]][:20]
        assert [follower.expect_message(15).text for _ in range(310)] == [f"m{i}" for i in range(1, 311)]
        follower.expect_nothing(0.3)
