"""History and resume on the embedded broker: every delivery of a destination with history
carries `x-position: <epoch>:<seq>`; a SUBSCRIBE with `x-resume-from` gets what it missed, then
the live messages, with no gap and no duplicate at the seam; the RECEIPT says whether the
resume was complete (`x-recovered`) and where the destination stands (`x-position`)."""
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from support.process import free_port, terminate, wait_until
from support.redis import redis_cli, redis_server_args
from support.sockets import tcp_queue_bytes


def connected(clients, gw):
    return clients(gw)


def seq(frame):
    return int(frame["x-position"].rsplit(":", 1)[1])


def test_positions_and_resume_after_missed_messages(gateway, clients):
    a = clients(gateway)
    r = a.subscribe("/topic/h.news", id="n", receipt="r1")
    start = r["x-position"]
    assert start.endswith(":0") and "x-recovered" not in r.headers
    for i in range(3):
        assert gateway.publish("/topic/h.news", f"m{i}").status_code == 200
    got = a.receive_many(3)
    assert [m.text for m in got] == ["m0", "m1", "m2"]
    assert [seq(m) for m in got] == [1, 2, 3]
    last = got[-1]["x-position"]
    a.close()
    for i in range(3, 6):  # missed while away
        gateway.publish("/topic/h.news", f"m{i}")
    b = clients(gateway)
    r = b.subscribe("/topic/h.news", id="n", receipt="r2", **{"x-resume-from": last})
    assert r["x-recovered"] == "true"
    assert r["x-position"].endswith(":6")
    gateway.publish("/topic/h.news", "m6")
    got = b.receive_many(4)
    assert [m.text for m in got] == ["m3", "m4", "m5", "m6"]
    assert [seq(m) for m in got] == [4, 5, 6, 7]
    b.expect_nothing(0.2)
    # Resuming from the subscription's own start position replays everything since.
    c = clients(gateway)
    r = c.subscribe("/topic/h.news", id="x", receipt="r3", **{"x-resume-from": start})
    assert r["x-recovered"] == "true"
    assert [m.text for m in c.receive_many(7)] == [f"m{i}" for i in range(7)]


def test_last_n_messages(gateway, clients):
    for i in range(5):
        gateway.publish("/topic/h.last", f"m{i}")
    c = clients(gateway)
    r = c.subscribe("/topic/h.last", id="l", receipt="r", **{"x-last": "2"})
    assert r["x-recovered"] == "true"
    assert [m.text for m in c.receive_many(2)] == ["m3", "m4"]
    c.expect_nothing(0.2)


def test_unrecoverable_positions_are_said_so(gateway_factory, clients):
    gw = gateway_factory("history.max-length=3")
    for i in range(5):
        gw.publish("/topic/h.trim", f"m{i}")
    a = clients(gw)
    a.subscribe("/topic/h.trim", id="t", receipt="r0", **{"x-last": "1"})
    epoch = a.receive()["x-position"].rsplit(":", 1)[0]
    # Trimmed: told, and given what is left.
    b = clients(gw)
    r = b.subscribe("/topic/h.trim", id="t", receipt="r1", **{"x-resume-from": f"{epoch}:1"})
    assert r["x-recovered"] == "false"
    assert [m.text for m in b.receive_many(3)] == ["m2", "m3", "m4"]
    # Another epoch (e.g. before a restart): told, and given the window.
    c = clients(gw)
    r = c.subscribe("/topic/h.trim", id="t", receipt="r2", **{"x-resume-from": "someoldepoch:4"})
    assert r["x-recovered"] == "false"
    assert [m.text for m in c.receive_many(3)] == ["m2", "m3", "m4"]


def test_restart_changes_the_epoch(gateway_factory, clients):
    gw = gateway_factory()
    gw.publish("/topic/h.restart", "before")
    a = clients(gw)
    pos = a.subscribe("/topic/h.restart", id="r", receipt="r", **{"x-last": "1"})["x-position"]
    gw.stop()
    gw2 = gateway_factory()
    b = clients(gw2)
    r = b.subscribe("/topic/h.restart", id="r", receipt="r", **{"x-resume-from": pos})
    assert r["x-recovered"] == "false"
    b.expect_nothing(0.2)


def test_bad_resume_headers_are_errors(gateway, clients):
    for headers, message in [
        ({"x-resume-from": "nonsense"}, "invalid x-resume-from 'nonsense': expected <epoch>:<sequence> from an x-position header"),
        ({"x-last": "-1"}, "invalid x-last '-1': expected a number of messages ≥ 0"),
        ({"x-last": "1", "x-resume-from": "a:1"}, "SUBSCRIBE takes x-resume-from or x-last, not both"),
    ]:
        c = clients(gateway)
        c.subscribe("/topic/h.bad", id="b", **headers)
        c.expect_error(message)
    c = clients(gateway)
    c.subscribe("/topic/h.*", id="w", **{"x-last": "3"})
    c.expect_error("x-resume-from and x-last need one destination, not the pattern '/topic/h.*' (history is kept per destination)")


def test_history_off_for_a_prefix(gateway_factory, clients):
    gw = gateway_factory("history.disabled-prefixes=/topic/live.")
    a = clients(gw)
    r = a.subscribe("/topic/live.ticks", id="t", receipt="r", **{"x-last": "5"})
    assert r["x-recovered"] == "false" and "x-position" not in r.headers
    gw.publish("/topic/live.ticks", "tick")
    m = a.expect_message()
    assert "x-position" not in m.headers


def test_resume_seam_under_load_has_no_gap_and_no_duplicate(gateway, clients):
    """A publisher runs flat out while subscribers leave and resume again and again: each one
    sees every sequence number exactly once, in order."""
    stop = threading.Event()
    published = []

    def publisher():
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                s.post(gateway.base + "/api/notification", json={"topic": "/topic/h.seam", "message": str(i)}, timeout=5)
                published.append(i)
                i += 1

    seen = {}
    positions = {}
    t = threading.Thread(target=publisher, daemon=True)
    t.start()
    try:
        subscribers = [clients(gateway) for _ in range(3)]
        for n, c in enumerate(subscribers):
            positions[n] = c.subscribe("/topic/h.seam", id="s", receipt=f"r{n}")["x-position"]
            seen[n] = []
        for round_ in range(8):
            for n in range(3):
                c = subscribers[n]
                deadline = time.monotonic() + 0.15
                while time.monotonic() < deadline:
                    try:
                        m = c.receive(0.05)
                    except Exception:
                        continue
                    if m.command == "MESSAGE":
                        seen[n].append(seq(m))
                        positions[n] = m["x-position"]
                c.close()
                c = clients(gateway)
                r = c.subscribe("/topic/h.seam", id="s", receipt=f"again{round_}", **{"x-resume-from": positions[n]})
                assert r["x-recovered"] == "true", r.headers
                subscribers[n] = c
    finally:
        stop.set()
        t.join(10)
    total = len(published)
    for n, c in enumerate(subscribers):
        def caught_up():
            while True:
                try:
                    m = c.receive(0.2)
                except Exception:
                    return seen[n] and seen[n][-1] == total
                seen[n].append(seq(m))
        wait_until(caught_up, 15, what=f"subscriber {n} caught up")
        first = seen[n][0]
        assert seen[n] == list(range(first, total + 1)), f"subscriber {n}: gaps or duplicates"


def test_stomppy_resumes_with_headers_only(gateway, stomppy):
    conn, lst = stomppy(gateway)
    conn.subscribe("/topic/h.py", id="p", receipt="r1")
    start = lst.wait_receipt("r1")["x-position"]
    for i in range(3):
        gateway.publish("/topic/h.py", f"m{i}")
    (h0, _), (h1, _), (h2, _) = lst.wait_messages(3)
    conn.disconnect()
    gateway.publish("/topic/h.py", "missed")
    conn2, lst2 = stomppy(gateway)
    conn2.subscribe("/topic/h.py", id="p", receipt="r2", headers={"x-resume-from": h2["x-position"]})
    receipt = lst2.wait_receipt("r2")
    assert receipt["x-recovered"] == "true"
    (headers, body), = lst2.wait_messages(1)
    assert body == "missed" and headers["x-position"] != h2["x-position"]
    assert start.split(":")[0] == h0["x-position"].split(":")[0]


def test_one_order_per_destination_with_many_publishers(gateway, clients):
    """API and STOMP publishers on different connections (so different event loops) publish
    to one destination at once: every subscriber sees the same messages in the same order, the
    sequence order, without a gap."""
    subs = [clients(gateway) for _ in range(4)]
    for n, c in enumerate(subs):
        c.subscribe("/topic/h.order", id="o", receipt=f"r{n}")
    per_publisher, stomp_publishers, api_publishers = 150, 3, 3

    def stomp_publisher(k):
        p = clients(gateway)
        for i in range(per_publisher):
            p.send("/topic/h.order", f"s{k}-{i}")
        p.send("/topic/h.order", "", receipt="done")  # waits for the receipt: all of this connection's SENDs are done

    def api_publisher(k):
        with requests.Session() as s:
            for i in range(per_publisher):
                assert s.post(gateway.base + "/api/notification", json={"topic": "/topic/h.order", "message": f"a{k}-{i}"},
                              timeout=10).status_code == 200

    threads = [threading.Thread(target=stomp_publisher, args=(k,)) for k in range(stomp_publishers)]
    threads += [threading.Thread(target=api_publisher, args=(k,)) for k in range(api_publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = per_publisher * (stomp_publishers + api_publishers) + stomp_publishers  # + the empty receipted SENDs
    orders = []
    for c in subs:
        frames = c.receive_many(total, timeout=30)
        assert [seq(m) for m in frames] == list(range(1, total + 1))
        orders.append([m.text for m in frames])
        c.expect_nothing(0.2)
    assert all(o == orders[0] for o in orders)
    for k in range(stomp_publishers):  # per publisher, publish order
        mine = [t for t in orders[0] if t.startswith(f"s{k}-")]
        assert mine == [f"s{k}-{i}" for i in range(per_publisher)]
    for k in range(api_publishers):
        mine = [t for t in orders[0] if t.startswith(f"a{k}-")]
        assert mine == [f"a{k}-{i}" for i in range(per_publisher)]


def test_history_windows_by_prefix(gateway_factory, clients):
    gw = gateway_factory("history.windows.names=small", "history.windows.small.prefix=/topic/h.small.",
                         "history.windows.small.max-length=2")
    for i in range(5):
        gw.publish("/topic/h.small.x", f"s{i}")
        gw.publish("/topic/h.big", f"b{i}")
    a = clients(gw)
    a.subscribe("/topic/h.small.x", id="s", receipt="r1", **{"x-last": "5"})
    assert [m.text for m in a.receive_many(2)] == ["s3", "s4"]
    b = clients(gw)
    b.subscribe("/topic/h.big", id="b", receipt="r2", **{"x-last": "5"})
    assert [m.text for m in b.receive_many(5)] == [f"b{i}" for i in range(5)]


def test_a_window_without_prefix_stops_start_up(gateway_factory):
    import subprocess
    from support.paths import BINARY
    out = subprocess.run([BINARY, "--port", "0", "--set", "history.windows.names=w"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "history.windows.w.prefix is required and must start with '/'" in out.stderr, out.stderr


@pytest.fixture(params=["embedded", "redis"])
def small_limit_gateway(request, gateway_factory, tmp_path):
    """A gateway with a 64 KiB pending-bytes limit and 200 messages of history, on the embedded
    broker or on a redis-server of its own."""
    sets = ["limits.max-pending-bytes=65536", "history.max-length=200"]
    redis = None
    if request.param == "redis":
        port = free_port()
        redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        sets.append(f"redis.url=redis://127.0.0.1:{port}")
    try:
        gw = gateway_factory(*sets)
        yield gw
        assert gw.stop() == 0  # before its Redis goes
    finally:
        if redis is not None:
            terminate(redis)


def test_a_replay_larger_than_the_pending_limit_arrives_whole(small_limit_gateway, clients):
    """200 messages of 8 KB (1.6 MB) replayed to a client whose connection may hold 64 KiB: the
    replay goes out as the socket drains. Before, it was handed to the connection at once and the
    session ended as a slow consumer right after it (an ERROR, and one more reconnection)."""
    gw = small_limit_gateway
    topic = "/topic/h.big-replay"
    body = "x" * 8_000
    for i in range(200):
        assert gw.publish(topic, f"{i:03d}{body}").status_code == 200
    c = clients(gw)
    r = c.subscribe(topic, id="b", receipt="r", **{"x-last": "200"})
    assert r["x-recovered"] == "true"
    gw.publish(topic, f"200{body}")  # live, after the replay
    got = c.receive_many(201, timeout=20)
    assert [m.command for m in got] == ["MESSAGE"] * 201, [m.headers for m in got if m.command != "MESSAGE"][:1]
    assert [m.text[:3] for m in got] == [f"{i:03d}" for i in range(201)]
    c.expect_nothing(0.3)


def history_reads(port: int) -> int:
    """`FCALL`s so far (`INFO commandstats`): history reads, and publishes (none meanwhile here)."""
    calls = 0
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_fcall:"):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


def test_clients_resuming_one_destination_at_once_share_one_history_read(gateway_factory, clients, tmp_path):
    """The clients of a killed instance reconnect and resume the same destination at once: one
    history read in Redis serves them all (before, one read per client: a storm of reads, and a
    copy of the replay per client). Redis is paused while they subscribe, so every read after
    the first finds it in flight, deterministically."""
    port = free_port()
    redis = subprocess.Popen(redis_server_args(port, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis_cli(port, "PING") == "PONG", 10, what="redis-server up")
        gw = gateway_factory(f"redis.url=redis://127.0.0.1:{port}", "redis.command-timeout-ms=20000")
        topic = "/topic/h.storm"
        watcher = clients(gw)
        watcher.subscribe(topic, id="w", receipt="w")  # the instance knows the destination's position
        for i in range(20):
            assert gw.publish(topic, f"m{i}").status_code == 200
        assert [m.text for m in watcher.receive_many(20)] == [f"m{i}" for i in range(20)]
        shared_before = gw.metric("switchboard_history_resume_reads_shared_total")
        reads_before = history_reads(port)
        resumers = [clients(gw) for _ in range(30)]
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            for c in resumers:
                c.send_frame("SUBSCRIBE", {"destination": topic, "id": "r", "receipt": "r", "x-last": "20"})
            wait_until(lambda: gw.metric("switchboard_subscriptions") >= 31, 20, what="every SUBSCRIBE registered")
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        for c in resumers:
            assert c.expect_receipt("r", timeout=20)["x-recovered"] == "true"
            assert [m.text for m in c.receive_many(20, timeout=20)] == [f"m{i}" for i in range(20)]
        assert gw.metric("switchboard_history_resume_reads_shared_total") - shared_before == 29
        reads = history_reads(port) - reads_before
        assert reads <= 5, f"{reads} history reads for 30 resumes"  # one (and the canary's, if any)
        gw.publish(topic, "live")
        for c in resumers:
            assert c.receive().text == "live"
            c.expect_nothing(0.05)
        assert gw.stop() == 0
    finally:
        terminate(redis)


def test_a_paced_replay_keeps_little_unsent_in_the_kernel(gateway_factory, clients):
    """While a replay is paced the socket keeps at most two chunks unsent (TCP_NOTSENT_LOWAT),
    so the gateway sees the client's progress chunk by chunk. Before, the kernel's send buffer
    took 2.8 MB of a 4.8 MB replay to a client that reads nothing, and then more only once a
    third of it was sent: a client reading 100 KB/s steadily looked stalled for over 10 s and
    was closed (`limits.replay-stall-timeout-ms`)."""
    gw = gateway_factory("history.max-length=300", "limits.max-pending-bytes=262144", "limits.replay-stall-timeout-ms=30000")
    topic = "/topic/h.unsent"
    with requests.Session() as s:
        for i in range(300):
            r = s.post(f"{gw.base}/api/notification", json={"topic": topic, "message": f"{i:03d}" + "x" * 16_000}, timeout=5)
            assert r.status_code == 200
    c = clients(gw, ws={"sockopt": ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)})
    c.send_frame("SUBSCRIBE", {"destination": topic, "id": "1", "x-last": "300", "receipt": "r"})
    wait_until(lambda: tcp_queue_bytes(gw.port, "tx") > 0, 10, what="the replay in the kernel's send queue")
    peak = 0
    deadline = time.monotonic() + 1.5  # the queue is sampled a while: it only grows while nothing is read
    while time.monotonic() < deadline:
        peak = max(peak, tcp_queue_bytes(gw.port, "tx"))
        time.sleep(0.05)
    # Two chunks of 64 KiB unsent at most, plus what the peer's small window holds in flight.
    assert peak <= 2 * 65536 + 32768, f"{peak} bytes queued in the kernel"
    assert c.expect_receipt("r", timeout=10)["x-recovered"] == "true"
    got = c.receive_many(300, timeout=30)
    assert [m.text[:3] for m in got] == [f"{i:03d}" for i in range(300)]
