"""A receipted /app message is never left unprocessed: the gateway is ready only once its
consumer groups exist, re-creates them (at 0) after Redis lost its data, and a slow replica
keeps the entries it works on instead of losing them to a fast one."""
import re
import signal
import subprocess

import requests

from support.process import wait_until

STREAM = "GREETING_CHANNEL_OUTBOUND"
GROUP = "greeting-service"


def processed_ids(cluster, replicas):
    ids = []
    for j in replicas:
        ids += re.findall(r"processed (\S+) by", cluster.replica_log(j))
    return ids


def groups_of(cluster) -> list[str]:
    lines = cluster.redis_cli("XINFO", "GROUPS", STREAM).splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "name"]


def ready(cluster, i=0) -> bool:
    return requests.get(f"{cluster.gw_url(i)}/health/ready", timeout=1).status_code == 200


def pending(cluster) -> int:
    return int(cluster.redis_cli("XPENDING", STREAM, GROUP).splitlines()[0])


def send_greetings(cluster, clients, n, prefix):
    sender = clients(cluster.client(cluster.gw_ws(0)))
    for i in range(n):
        sender.send("/app/greet", f"{prefix}{i}", receipt=f"{prefix}{i}")


def test_ready_only_once_groups_exist_and_receipted_sends_are_processed(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=1)
    # A gateway starting against an empty Redis.
    cluster.kill_gateway(0)
    cluster.redis_cli("FLUSHALL")
    cluster.start_gateway(0)
    wait_until(lambda: ready(cluster), timeout=15, interval=0.005, what="gw0 ready")
    assert GROUP in groups_of(cluster), "ready before its consumer group exists"
    send_greetings(cluster, clients, 20, "early")
    cluster.start_replica(0)
    wait_until(lambda: len(processed_ids(cluster, [0])) >= 20, timeout=20, what="20 greetings processed")
    assert len(set(processed_ids(cluster, [0]))) == 20


def test_groups_come_back_after_redis_restarts_empty(cluster_factory, clients):
    cluster = cluster_factory(replicas=0, gateways=1)
    assert GROUP in groups_of(cluster)
    cluster.kill_redis()
    wait_until(lambda: not ready(cluster), what="not ready without redis")
    cluster.start_redis()  # no persistence: the stream and its group are gone
    wait_until(lambda: ready(cluster), timeout=20, interval=0.005, what="ready again")
    assert GROUP in groups_of(cluster), "ready again before the consumer group was re-created"
    send_greetings(cluster, clients, 3, "after")
    cluster.start_replica(0)
    wait_until(lambda: len(processed_ids(cluster, [0])) >= 3, timeout=20, what="greetings after the restart processed")


def test_send_stored_while_the_group_is_missing_is_not_skipped(cluster_factory, clients):
    cluster = cluster_factory(replicas=1, gateways=1)
    send_greetings(cluster, clients, 1, "before")
    wait_until(lambda: len(processed_ids(cluster, [0])) == 1, timeout=20, what="first greeting processed")
    cluster.redis_cli("FLUSHALL")  # data lost without a reconnect
    send_greetings(cluster, clients, 1, "lost?")  # may be stored before the group is back: still processed
    wait_until(lambda: len(processed_ids(cluster, [0])) == 2, timeout=20, what="greeting stored after FLUSHALL processed")
    wait_until(lambda: GROUP in groups_of(cluster) and pending(cluster) == 0, what="group back, nothing pending")


def test_slow_and_fast_replicas_process_each_entry_exactly_once(cluster_factory):
    cluster = cluster_factory(replicas=0, gateways=1)
    n = 1000
    script = "".join(f"XADD {STREAM} * destination /app/greet message u{i} content-type text/plain session s-{i} "
                     f"instance gw0 timestamp 1\n" for i in range(n))
    subprocess.run(["redis-cli", "-p", str(cluster.redis_port)], input=script, text=True, capture_output=True, check=True, timeout=30)
    assert cluster.redis_cli("XLEN", STREAM) == str(n)
    # 16 entries × 150 ms per batch of the slow replica: longer than claim-min-idle. 2 s of it, so
    # its renewals (every third of it) have more than a second of slack on a loaded machine.
    timing = ["--claim-min-idle-ms", "2000", "--claim-interval-ms", "50"]
    cluster.start_replica(0, "--processing-delay-ms", "150", *timing)

    def slow_holds_entries():
        lines = cluster.redis_cli("XPENDING", STREAM, GROUP).splitlines()
        return "greeting-0" in lines

    wait_until(slow_holds_entries, timeout=20, what="the slow replica holding a batch")
    cluster.start_replica(1, *timing)
    wait_until(lambda: pending(cluster) == 0 and len(set(processed_ids(cluster, [0, 1]))) == n, timeout=60,
               what="every entry processed and acknowledged")
    for j in (0, 1):  # a stopped replica finishes the handler in flight, then exits
        proc = cluster.procs.pop(f"replica{j}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    slow, fast = processed_ids(cluster, [0]), processed_ids(cluster, [1])
    both = slow + fast
    twice = {i for i in both if both.count(i) > 1}
    assert not twice, f"{len(twice)} entries processed twice"
    assert len(both) == n and slow and fast
