"""Redis Sentinel: a gateway finds the primary through two sentinels and follows a failover
(the primary is killed, the sentinels promote the replica): readiness is 503 while no primary
is known and 200 again after, the HTTP publish API works again and a STOMP subscriber receives
what is published after the failover. Then fault tests that count loss, duplicates and reorders
per subscriber across a failover: kill -9 of the primary, SENTINEL FAILOVER, and a primary that
dies with writes its replica never got. Last, `redis.wait-replicas`: a stream route's RECEIPT
only once the replica has the entry, across a kill -9 failover."""
import os
import signal

import pytest
import requests

from support.gateway import metric
from support.history import Publisher, drain, finish_and_count, resume_then_finish
from support.process import wait_until
from support.redis import pause_until_replicated, redis_cli
from support.stompclient import StompClient


def publish(cluster, message):
    return requests.post(f"{cluster.gw_url(0)}/api/notification", json={"topic": "/topic/failover", "message": message}, timeout=3)


def received_after_publishing(cluster, subscriber, message):
    """Publishes `message` (again) and waits briefly for it: true once it arrives."""
    if publish(cluster, message).status_code != 200:
        return False
    while True:
        frame = subscriber.expect_message(0.5)
        if frame.text == message:
            return True


def test_gateway_follows_sentinel_failover(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=1, sentinels=2)
    subscriber = clients(cluster.client(cluster.gw_ws(0)))
    subscriber.subscribe("/topic/failover", id="f", receipt="r")
    publish(cluster, "before").raise_for_status()
    assert subscriber.expect_message().text == "before"
    assert "switchboard-gw0" in redis_cli(cluster.redis_port, "CLIENT", "LIST")

    cluster.kill_redis()
    wait_until(lambda: requests.get(f"{cluster.gw_url(0)}/health/ready", timeout=1).status_code == 503, what="not ready")
    wait_until(lambda: redis_cli(cluster.redis_replica_port, "ROLE").startswith("master"), 20, what="replica promoted")
    cluster.wait_ready(0)
    # The gateway's connections (client name switchboard-gw0) are on the new primary.
    wait_until(lambda: "switchboard-gw0" in redis_cli(cluster.redis_replica_port, "CLIENT", "LIST"), what="gateway on the new primary")
    wait_until(lambda: received_after_publishing(cluster, subscriber, "after-failover"), 20, what="delivery after failover")


# -- Loss-counting fault tests across a Sentinel failover ---------------------------------------
#
# Two gateways find the primary through three sentinels; four subscribers (two per gateway) on
# one history destination; a publisher sends "0", "1", ... through gw0's HTTP API and sends a
# number again until the API accepts it (a 503 while no primary is known is a refusal, counted,
# not a loss). Every number the API accepted (200) must reach every subscriber once, in order,
# or the subscriber must be told (`x-recovered: false`, a jump in `x-position`, a new epoch).
#
# What Redis replication gives: the replica gets the primary's writes asynchronously, and the
# API's 200 means "recorded on the primary" (publishes do not `WAIT` for the replica; only
# stream routes can, with redis.wait-replicas, the last test). A
# write acknowledged just before the kill may not have reached the replica yet (on a loaded
# machine it happened), so the kill test first holds the primary's writes until the replica has
# all it acknowledged (`pause_until_replicated`); then the promoted replica holds the whole
# history. A write the replica never received
# (its link was down when the primary died) is gone: test_unreplicated_writes_... shows what
# the gateways make of that.

SUBSCRIBERS = 4


def start_run(cluster_factory, clients, topic):
    """A Sentinel cluster with SUBSCRIBERS subscribers of `topic` (alternating gw0, gw1) and a
    publisher through gw0 that has had 30 numbers accepted."""
    # A history window longer than the run: a resume after the failover is never beyond it.
    cluster = cluster_factory(replicas=0, gateways=2, sentinels=3, gateway_args=("--set", "history.max-length=10000"))
    subs = []
    for i in range(SUBSCRIBERS):
        c = clients(cluster.client(cluster.gw_ws(i % 2)))
        c.subscribe(topic, id="1", receipt="r")
        subs.append(c)
    pub = Publisher(cluster.gw_url(0), topic, retry_refused=True)
    pub.start()
    wait_until(lambda: len(pub.answered) >= 30, 20, what="publishing")
    return cluster, subs, pub


def promoted(cluster):
    """Waits until the replica is the primary and both gateways are ready on it."""
    wait_until(lambda: redis_cli(cluster.redis_replica_port, "ROLE").startswith("master"), 20, what="replica promoted")
    for i in range(2):
        cluster.wait_ready(i)


def test_kill9_primary_sentinel_failover_resuming_clients_lose_nothing(cluster_factory, clients):
    """kill -9 of the Redis primary mid-run: the sentinels promote the replica, both gateways
    follow; connected subscribers and two that reconnect during the outage (each to the other
    gateway, resuming with `x-resume-from`) get every accepted number once, in order; the only
    refusals are 503s. The promotion shows as one jump in `x-position` (and a resume across it
    says `x-recovered: false`), since the promoted server cannot know what the old primary
    issued last; here nothing is missing behind it."""
    topic = "/topic/sentinel-kill"
    cluster, subs, pub = start_run(cluster_factory, clients, topic)
    received = {k: [] for k in range(SUBSCRIBERS)}
    frames = {k: [] for k in range(SUBSCRIBERS)}
    # Every write the primary acknowledged is on its replica when it dies (see above).
    pause_until_replicated(lambda *args: redis_cli(cluster.redis_port, *args))
    mark = pub.answered[-1]
    cluster.kill_redis()
    # The resumers (one per gateway) read what was accepted before the kill, then their sockets close.
    resumers, positions = [2, 3], {}
    for k in resumers:
        bodies, positions[k] = drain(subs[k], lambda b: bool(b) and b[-1] >= mark, timeout=10, frames=frames[k])
        received[k] += bodies
        subs[k].close()
    promoted(cluster)
    # The promoted server moved the sequence ahead (it cannot know what the old primary issued
    # last), so a resume across the failover says "not recovered", and still replays everything
    # history keeps: the audit below finds nothing missing.
    counts = resume_then_finish(pub, subs, received, frames, topic, positions,
                                lambda k: clients(cluster.client(cluster.gw_ws((k + 1) % 2))))
    for k, (lost, dups, reorders, signalled) in counts.items():
        # Nothing is lost; the promotion itself shows as a jump in x-position (docs/recovery.md).
        assert (lost, dups, reorders) == ([], 0, 0), \
            f"subscriber {k}: lost {lost[:10]}, {dups} dups, {reorders} reorders, gap signalled {signalled}"
    # The history survived the promotion: the new primary numbered every accepted message.
    assert int(redis_cli(cluster.redis_replica_port, "HGET", f"switchboard:{{{topic}}}:seq", "n")) >= len(pub.answered)


def test_planned_sentinel_failover_loss_is_signalled(cluster_factory, clients):
    """SENTINEL FAILOVER (the primary stays up) mid-traffic: both gateways move to the promoted
    replica. Sentinel does not stop writes on the old primary: publishes answered by it between
    the promotion and +switch-master (about 1 s) are dropped when it resyncs. Every subscriber
    gets every other accepted number once, in order, and any loss shows as a jump in x-position
    (the promoted server moves the sequence ahead, docs/recovery.md)."""
    topic = "/topic/sentinel-planned"
    cluster, subs, pub = start_run(cluster_factory, clients, topic)
    received = {k: [] for k in range(SUBSCRIBERS)}
    frames = {k: [] for k in range(SUBSCRIBERS)}
    assert redis_cli(cluster.sentinel_ports[0], "SENTINEL", "FAILOVER", "main") == "OK"
    promoted(cluster)
    wait_until(lambda: redis_cli(cluster.redis_port, "ROLE").startswith("slave"), 20, what="old primary is a replica")
    before = len(pub.answered)
    wait_until(lambda: len(pub.answered) >= before + 40, 20, what="publishing after the failover")
    counts = finish_and_count(pub, subs, received, frames)
    assert set(pub.refused) <= {503, 504}, pub.refused
    for k, (lost, dups, reorders, signalled) in counts.items():
        assert (dups, reorders) == (0, 0) and (not lost or signalled), \
            f"subscriber {k}: lost {lost[:10]}, {dups} dups, {reorders} reorders, gap signalled {signalled}"


def test_unreplicated_writes_lost_in_failover_are_signalled(cluster_factory, clients):
    """The replica's link is down (stopped, its connection killed) while the primary accepts a
    few numbers, which the subscribers get live; then the primary is killed: those writes are
    gone with it (asynchronous replication), and the promoted replica's sequence is behind what
    the subscribers saw. Every accepted number must still arrive, or the loss be signalled."""
    topic = "/topic/sentinel-lag"
    cluster, subs, pub = start_run(cluster_factory, clients, topic)
    received = {k: [] for k in range(SUBSCRIBERS)}
    frames = {k: [] for k in range(SUBSCRIBERS)}
    replica = cluster.procs["redis-replica"]
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        assert int(cluster.redis_cli("CLIENT", "KILL", "TYPE", "replica")) == 1
        before = len(pub.answered)
        wait_until(lambda: len(pub.answered) >= before + 5, 10, what="numbers accepted by the primary alone")
        mark = pub.answered[before + 4]
        for k in range(SUBSCRIBERS):  # they reach every subscriber live
            bodies, _ = drain(subs[k], lambda b: bool(b) and b[-1] >= mark, timeout=10, frames=frames[k])
            received[k] += bodies
            assert mark in bodies, f"subscriber {k} did not get {mark} live"
        cluster.kill_redis()
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    promoted(cluster)
    before = len(pub.answered)
    wait_until(lambda: len(pub.answered) >= before + 40, 20, what="publishing after the failover")
    counts = finish_and_count(pub, subs, received, frames)
    assert set(pub.refused) <= {503, 504}, pub.refused
    for k, (lost, dups, reorders, signalled) in counts.items():
        assert dups == 0 and reorders == 0, f"subscriber {k}: {dups} dups, {reorders} reorders"
        assert not lost or signalled, \
            f"subscriber {k}: accepted numbers {lost[:10]} (the replica missed the numbers up to {mark} and more) never arrived and nothing said so"


# -- redis.wait-replicas: a RECEIPT means the replica has the entry too --------------------------

ORDERS_CONFIG = """routes:
  names: [orders]
  orders:
    destination: /app/orders
    type: redis-stream
    stream: orders
"""


def send_receipted(cluster, msg_id: str, client=None):
    """A receipted SEND of `msg_id` to /app/orders on gw0 (on `client`, or a new connection);
    the frame that answers it (RECEIPT or ERROR)."""
    c = client
    if c is None:
        c = StompClient(cluster.gw_ws(0), timeout=5)
        c.connect()
    c.send_frame("SEND", {"destination": "/app/orders", "x-msg-id": msg_id, "receipt": msg_id}, msg_id)
    frame = c.receive(10)
    if client is None:
        c.close()
    return frame


def stream_ids(port: int) -> list[str]:
    """The x-msg-id of every entry of the `orders` stream on the server at `port`, in order."""
    out = redis_cli(port, "XRANGE", "orders", "-", "+").splitlines()
    return [out[i + 1] for i, line in enumerate(out) if line == "x-msg-id"]


def test_receipts_wait_for_the_replica_across_a_kill9_failover(cluster_factory):
    """`redis.wait-replicas=1`: the stream route's RECEIPT comes only once the replica has the
    entry. Receipted SENDs go in, and each is on the replica when its RECEIPT arrives. Then the
    replica's link is cut (stopped, its connection killed): SENDs get an ERROR saying no replica
    acknowledged them, never a RECEIPT. kill -9 of the primary, the sentinels promote the
    replica: every receipted entry is in the new primary's stream; the refused ones are not
    (they were at risk, and the ERROR said so). The new primary has no replica: a SEND gets an
    ERROR again (the route fails closed). Without the wait, the SENDs during the cut get
    RECEIPTs and are lost in the failover."""
    cluster = cluster_factory(replicas=0, gateways=1, sentinels=2, config_yaml=ORDERS_CONFIG,
                              gateway_args=("--set", "redis.wait-replicas=1", "--set", "redis.wait-replicas-timeout-ms=2000"))
    client = StompClient(cluster.gw_ws(0), timeout=5)
    client.connect()
    receipted = []
    for n in range(20):
        frame = send_receipted(cluster, f"r{n}", client)
        assert frame.command == "RECEIPT", f"r{n}: {frame.command} {frame.get('message')}"
        receipted.append(f"r{n}")
        assert stream_ids(cluster.redis_replica_port)[-1] == f"r{n}", f"r{n} was receipted before the replica had it"
    client.close()

    replica = cluster.procs["redis-replica"]
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        assert int(cluster.redis_cli("CLIENT", "KILL", "TYPE", "replica")) == 1
        refused = []
        for n in range(3):
            frame = send_receipted(cluster, f"x{n}")
            assert frame.command == "ERROR", f"x{n} got a {frame.command} while no replica could acknowledge it"
            assert "not acknowledged by 1 replica within 2000 ms" in frame.get("message", ""), frame.get("message")
            refused.append(f"x{n}")
        # The refused entries are on the primary alone.
        assert stream_ids(cluster.redis_port)[-3:] == refused
        assert metric(requests.get(f"{cluster.gw_url(0)}/metrics", timeout=3).text, "switchboard_redis_xadd_not_replicated_total") >= 3
        cluster.kill_redis()
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    wait_until(lambda: redis_cli(cluster.redis_replica_port, "ROLE").startswith("master"), 20, what="replica promoted")
    cluster.wait_ready(0)
    on_new_primary = stream_ids(cluster.redis_replica_port)
    assert on_new_primary == receipted, f"receipted but lost in the failover: {sorted(set(receipted) - set(on_new_primary))}"
    # No replica behind the new primary: the route refuses to give a RECEIPT it cannot stand by.
    answers = []

    def refused_for_want_of_a_replica():
        frame = send_receipted(cluster, "after")
        answers.append((frame.command, frame.get("message")))
        assert frame.command != "RECEIPT", "a RECEIPT with no replica to acknowledge the entry"
        return "not acknowledged by 1 replica" in (frame.get("message") or "")
    wait_until(refused_for_want_of_a_replica, 20, what="the ERROR for want of a replica after the failover")
    assert all(command == "ERROR" for command, _ in answers), answers
