"""`CLIENT KILL TYPE normal` every 20 ms while six keep-alive HTTP publishers stream (no
idempotency keys, no retries). A publish written onto a connection Redis had already closed
(the write fails: `EPIPE`) was never received by Redis: it waits for the next connection and is
published, like a publish sent while disconnected. So no publish is refused (503). The only
failures are 504s: Redis may have run the command. Subscribers get every published message
once, and each publisher's messages in the order it sent them."""
import subprocess
import threading

import pytest
import requests

from support.gateway import Gateway
from support.process import free_port, terminate, wait_until
from support.redis import ClientKillStorm, redis_cli, redis_server_args

TOPIC = "/topic/kill.storm"
PUBLISHERS = 6
PER_PUBLISHER = 400


@pytest.fixture
def gateway(tmp_path, request):
    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = None
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        # A long command timeout: a 504 must come from a lost reply, not from a slow machine.
        gw = Gateway(name=f"kill-storm-{request.node.name}", sets=[f"redis.url=redis://127.0.0.1:{port}", "redis.command-timeout-ms=30000"])
        yield gw, port
    finally:
        if gw:
            gw.stop()
        terminate(redis)


def test_a_kill_storm_refuses_no_publish_and_reorders_nothing(gateway):
    gw, redis_port = gateway
    subs = []
    for _ in range(2):
        c = gw.client()
        c.connect()
        c.subscribe(TOPIC, id="s", receipt="s")
        subs.append(c)
    received = [[] for _ in subs]
    publishing = threading.Event()
    publishing.set()

    def read(index):
        sub = subs[index]
        while True:
            try:
                received[index].append(sub.expect_message(0.5).text)
            except TimeoutError:
                if not publishing.is_set():
                    return

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(subs))]
    for t in readers:
        t.start()

    answers = [[] for _ in range(PUBLISHERS)]

    def publisher(p):
        with requests.Session() as s:
            for i in range(PER_PUBLISHER):
                r = s.post(f"{gw.base}/api/notification", json={"topic": TOPIC, "message": f"{p}-{i:04d}"}, timeout=35)
                answers[p].append((i, r.status_code, r.text))

    storm = ClientKillStorm(redis_port, 0.02)
    publishers = [threading.Thread(target=publisher, args=(p,)) for p in range(PUBLISHERS)]
    try:
        for t in publishers:
            t.start()
        for t in publishers:
            t.join(120)
    finally:
        storm.stop()
    publishing.clear()
    for t in readers:
        t.join(30)

    assert storm.killed > 10, f"the storm killed {storm.killed} connections"
    statuses = [status for a in answers for _, status, _ in a]
    assert len(statuses) == PUBLISHERS * PER_PUBLISHER
    refused = [(p, i, status, text) for p, a in enumerate(answers) for i, status, text in a if status != 200 and status != 504]
    assert not refused, f"{len(refused)} publishes refused, e.g. {refused[:3]}"
    for p, a in enumerate(answers):
        published = [f"{p}-{i:04d}" for i, status, _ in a if status == 200]
        uncertain = {f"{p}-{i:04d}" for i, status, _ in a if status == 504}
        for got in received:
            mine = [t for t in got if t.startswith(f"{p}-")]
            assert mine == sorted(set(mine)), f"publisher {p}: duplicated or reordered: {[t for t, u in zip(mine, mine[1:]) if u <= t][:5]}"
            lost = [t for t in published if t not in set(mine)]
            assert not lost, f"publisher {p}: answered 200 but not delivered: {lost[:5]}"
            assert set(mine) <= set(published) | uncertain
    print(f"{storm.killed} connections killed; {statuses.count(504)} of {len(statuses)} publishes answered 504")
