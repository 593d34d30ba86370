"""Cross-instance delivery behind haproxy: every subscriber gets every message exactly once,
whichever instance holds its socket or took the API request, and in order per publisher whose
messages go through one instance."""
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from support.cluster import Cluster
from support.gateway import metric
from support.process import wait_until
from support.stompclient import send_bursts_until


def subscribe_all(clients, destination, prefix="s"):
    for n, c in enumerate(clients):
        c.subscribe(destination, id=f"{prefix}{n}", receipt=f"{prefix}-r{n}")


def collect(client, count, timeout=20.0):
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frames.append(client.expect_message(max(deadline - time.monotonic(), 0.01)))
    client.expect_nothing(0.3)
    return frames


def test_clients_spread_over_all_instances(shared_cluster, clients):
    shared_cluster.wait_all_up()
    cs = [clients(shared_cluster.client()) for _ in range(6)]
    instances = {Cluster.instance_of(c) for c in cs}
    assert instances == {"gw0", "gw1", "gw2"}


def publish_api(base_url, topic, prefix, n):
    """Publishes `prefix`-0 .. `prefix`-(n-1) with POST /api/notification on one keep-alive
    connection to `base_url`, each after the previous one's 200."""
    with requests.Session() as s:
        for i in range(n):
            r = s.post(f"{base_url}/api/notification", json={"topic": topic, "message": f"{prefix}-{i}"}, timeout=10)
            assert r.status_code == 200, r.text


def sequence(bodies, prefix):
    """The numbers of the bodies `prefix`-<n>, in arrival order."""
    return [int(b.split("-")[1]) for b in bodies if b.startswith(prefix + "-")]


def spread_subscribers(cluster, clients, destination, count=9):
    cluster.wait_all_up()
    subs = [clients(cluster.client()) for _ in range(count)]
    assert len({Cluster.instance_of(c) for c in subs}) == 3
    subscribe_all(subs, destination)
    return subs


def test_fanout_exactly_once_in_order_per_publisher(shared_cluster, clients):
    """Every message reaches every subscriber exactly once and in each publisher's order: a
    STOMP publisher, an API publisher on one keep-alive connection straight to gw1, and one
    balanced per request by haproxy (history gives each destination one order)."""
    subs = spread_subscribers(shared_cluster, clients, "/topic/fan")
    n = 100
    stomp_pub = clients(shared_cluster.client())
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(publish_api, shared_cluster.gw_url(1), "/topic/fan", "direct", n)
        balanced = pool.submit(publish_api, shared_cluster.lb_url, "/topic/fan", "api", n)
        for i in range(n):
            stomp_pub.send("/topic/fan", f"stomp-{i}", receipt=f"p{i}" if i % 10 == 9 else None)
        direct.result(60)
        balanced.result(60)
    for c in subs:
        bodies = [f.text for f in collect(c, 3 * n)]
        at = Cluster.instance_of(c)
        for source in ("stomp", "direct", "api"):
            assert sequence(bodies, source) == list(range(n)), f"{source} messages lost, duplicated or reordered at {at}"


def test_fanout_in_order_for_api_publisher_spread_over_instances(shared_cluster, clients):
    subs = spread_subscribers(shared_cluster, clients, "/topic/fan-spread")
    n = 100
    publish_api(shared_cluster.lb_url, "/topic/fan-spread", "api", n)  # haproxy balances per request
    for c in subs:
        frames = collect(c, n)
        assert sequence([f.text for f in frames], "api") == list(range(n)), f"api messages reordered at {Cluster.instance_of(c)}"
        # One history order: dense positions of one epoch, the same at every instance.
        positions = [f["x-position"] for f in frames]
        assert len({p.rsplit(":", 1)[0] for p in positions}) == 1
        seqs = [int(p.rsplit(":", 1)[1]) for p in positions]
        assert seqs == list(range(seqs[0], seqs[0] + n)), f"positions not dense at {Cluster.instance_of(c)}"


def test_an_api_retry_with_its_idempotency_key_is_delivered_once_whichever_instance_takes_it(shared_cluster, clients):
    """A backend that timed out retries its publish (haproxy may send it to another instance):
    with the same Idempotency-Key the retry is answered `duplicate` and nothing is delivered twice."""
    subs = spread_subscribers(shared_cluster, clients, "/topic/idem")
    answers = []
    for i in range(len(shared_cluster.gw_ports)):
        for key in ("order-1", "order-2"):
            r = requests.post(shared_cluster.gw_url(i) + "/api/notification", json={"topic": "/topic/idem", "message": key},
                              headers={"Idempotency-Key": key}, timeout=10)
            assert r.status_code == 200, r.text
            answers.append(r.json())
    # The first instance published each; every other one answered duplicate.
    assert [a.get("duplicate", False) for a in answers] == [False, False] + [True, True] * (len(shared_cluster.gw_ports) - 1)
    assert all("id" not in a for a in answers[2:])
    for c in subs:
        assert [f.text for f in collect(c, 2)] == ["order-1", "order-2"], f"at {Cluster.instance_of(c)}"
    # A STOMP client that reconnects to another instance and sends again with its key.
    for i in range(len(shared_cluster.gw_ports)):
        sender = clients(shared_cluster.client(shared_cluster.gw_ws(i)))
        sender.send("/topic/idem", "phone", headers={"idempotency-key": "phone-1"}, receipt=f"r{i}")
        sender.close()
    for c in subs:
        assert [f.text for f in collect(c, 1)] == ["phone"], f"at {Cluster.instance_of(c)}"


def test_wildcard_subscriptions_across_instances(shared_cluster, clients):
    subs = [clients(shared_cluster.client()) for _ in range(3)]
    for n, c in enumerate(subs):
        c.subscribe("/topic/prices.*", id="w", receipt="rw")
        c.subscribe("/topic/prices.eu", id="e", receipt="re")
    requests.post(f"{shared_cluster.lb_url}/api/notification", json={"topic": "/topic/prices.eu", "message": "p1"}).raise_for_status()
    requests.post(f"{shared_cluster.lb_url}/api/notification", json={"topic": "/topic/prices.us", "message": "p2"}).raise_for_status()
    for c in subs:
        frames = collect(c, 3)
        got = sorted((f["subscription"], f.text) for f in frames)
        assert got == [("e", "p1"), ("w", "p1"), ("w", "p2")]


def test_seed_curl_api_post_through_load_balancer(shared_cluster, clients):
    subs = [clients(shared_cluster.client()) for _ in range(3)]
    subscribe_all(subs, "/topic/toast", "t")
    out = subprocess.run(["curl", "-s", "-X", "POST", "-d", '{"topic": "/topic/toast", "message": "testing API endpoint" }',
                          "-H", "Content-Type: application/json", f"127.0.0.1:{shared_cluster.lb_port}/api/notification"],
                         capture_output=True, text=True, timeout=10)
    assert '"id"' in out.stdout
    for c in subs:
        (f,) = collect(c, 1)
        assert f.text == "testing API endpoint" and f["content-type"] == "text/plain"


def test_seed_redis_cli_publish_reaches_greetings(shared_cluster, clients):
    subs = [clients(shared_cluster.client()) for _ in range(3)]
    subscribe_all(subs, "/topic/greetings", "g")
    receivers = shared_cluster.redis_cli("PUBLISH", "GREETING_CHANNEL_INBOUND", '"Test Message from Backend PubSub"')
    assert int(receivers) == 3  # one subscription per instance
    for c in subs:
        (f,) = collect(c, 1)
        assert f.text == '"Test Message from Backend PubSub"'


def test_broadcast_channel_and_event_stream(shared_cluster, clients):
    subs = [clients(shared_cluster.client()) for _ in range(3)]
    subscribe_all(subs, "/topic/events", "ev")
    shared_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", '{"topic": "/topic/events", "message": "from broadcast"}')
    for c in subs:
        assert collect(c, 1)[0].text == "from broadcast"
    # Stream entries written in a burst, then more once the burst is delivered (the readers
    # are idle again): none skipped, none doubled.
    for i in range(30):
        shared_cluster.redis_cli("XADD", "TEST_EVENT_TO_WEBSOCKET_SERVER", "*", "topic", "/topic/events", "message", f"e{i}")
    for c in subs:
        assert [f.text for f in collect(c, 30)] == [f"e{i}" for i in range(30)]
    for i in range(30, 40):
        shared_cluster.redis_cli("XADD", "TEST_EVENT_TO_WEBSOCKET_SERVER", "*", "topic", "/topic/events", "message", f"e{i}")
    for c in subs:
        assert [f.text for f in collect(c, 10)] == [f"e{i}" for i in range(30, 40)]


def test_malformed_broadcasts_are_dropped_and_their_log_lines_bounded(shared_cluster, clients):
    """Anyone who can publish to a Redis channel decides how often a malformed payload arrives:
    each is dropped, at most 10 log lines per kind per 10 s per instance (the rest counted and
    reported on the next line let through), and the channel keeps working."""
    from support.paths import ARTIFACTS
    subs = [clients(shared_cluster.client(shared_cluster.gw_ws(i))) for i in range(3)]
    subscribe_all(subs, "/topic/after-garbage", "g")
    everything = clients(shared_cluster.client(shared_cluster.gw_ws(0)))
    everything.subscribe("/topic/**", id="all", receipt="all")
    # Names every other entry point refuses are dropped here too: not NFC, a control
    # character, over 1,024 bytes.
    for topic in ["/topic/cafe\u0301", "/topic/a\tb", "/topic/" + "x" * 1100]:
        shared_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", json.dumps({"topic": topic, "message": "refused"}))
    line = "broadcast payload is not"
    before = {i: (ARTIFACTS / f"{shared_cluster.name}-gw{i}.log").read_text(errors="replace").count(line) for i in range(3)}
    script = "".join(f"PUBLISH BROADCAST-CHANNEL not-json-{n}\n" for n in range(200))
    subprocess.run(["redis-cli", "-p", str(shared_cluster.redis_port)], input=script, text=True, capture_output=True, check=True, timeout=20)
    shared_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", '{"topic": "/topic/after-garbage", "message": "still works"}')
    for c in subs:
        assert collect(c, 1)[0].text == "still works"
    assert collect(everything, 1)[0].text == "still works"
    for i in range(3):
        logged = (ARTIFACTS / f"{shared_cluster.name}-gw{i}.log").read_text(errors="replace").count(line) - before[i]
        assert 1 <= logged <= 10, f"gw{i} logged {logged} lines for 200 malformed broadcasts"


def test_broadcasts_the_http_api_would_refuse_are_dropped(shared_cluster, clients):
    """A broadcast's headers and user are checked as the HTTP API checks them: an empty header
    name was recorded in history and then dropped by every instance reading it back (a jump in
    x-position), and a numeric user counted as none, so the private message went to every
    subscriber of the topic."""
    c = clients(shared_cluster.client(shared_cluster.gw_ws(0)))
    c.subscribe("/topic/checked", id="1", receipt="r")
    for bad in [{"topic": "/topic/checked", "message": "no", "headers": {"": "x"}},
                {"topic": "/topic/checked", "message": "no", "headers": {f"h{i}": "v" for i in range(65)}},
                {"topic": "/topic/checked", "message": "no", "user": 42},
                {"topic": "/topic/checked", "message": "no", "user": ""},
                {"topic": "/topic/checked", "message": "no", "user": "a\tb"}]:
        shared_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", json.dumps(bad))
    shared_cluster.redis_cli("PUBLISH", "BROADCAST-CHANNEL", json.dumps({"topic": "/topic/checked", "message": "yes", "headers": {"x-a": "1"}}))
    got = collect(c, 1)[0]
    assert got.text == "yes" and got["x-a"] == "1"
    c.expect_nothing(0.3)


def test_send_to_app_greet_is_stored_in_stream_before_receipt(shared_cluster, clients):
    c = clients(shared_cluster.client())
    c.send("/app/greet", "stream me", headers={"x-trace": "t-1", "content-type": "text/plain"}, receipt="s1")
    # The RECEIPT means the entry is in the stream now.
    entries = shared_cluster.redis_cli("XREVRANGE", "GREETING_CHANNEL_OUTBOUND", "+", "-", "COUNT", "50").splitlines()
    assert "stream me" in entries
    i = entries.index("stream me")
    block = entries[max(0, i - 3): i + 16]
    for field in ("destination", "/app/greet", "message", "content-type", "session", "instance", "timestamp", "x-trace", "t-1"):
        assert field in block, f"{field} missing from stream entry {block}"


def test_interest_based_redis_subscriptions(shared_cluster, clients):
    channel = "switchboard:dest:/topic/interest-only"
    assert shared_cluster.redis_cli("PUBSUB", "NUMSUB", channel).splitlines()[1] == "0"
    c = clients(shared_cluster.client(shared_cluster.gw_ws(0)))
    c.subscribe("/topic/interest-only", id="1", receipt="r")
    assert shared_cluster.redis_cli("PUBSUB", "NUMSUB", channel).splitlines()[1] == "1"
    c.unsubscribe("1", receipt="u")
    wait_until(lambda: shared_cluster.redis_cli("PUBSUB", "NUMSUB", channel).splitlines()[1] == "0", what="unsubscribe in redis")


def test_user_headers_named_like_the_envelopes_own_cross_instances(shared_cluster, clients):
    """A publisher's `origin` and `session` headers are user headers: a subscriber on another
    instance gets the message (it is not mistaken for one addressed to a session) with them."""
    sub = clients(shared_cluster.client(shared_cluster.gw_ws(1)))
    sub.subscribe("/topic/envelope.names", id="e", receipt="r")
    pub = clients(shared_cluster.client(shared_cluster.gw_ws(0)))
    pub.send("/topic/envelope.names", "hi", headers={"session": "not-a-session", "origin": "sensor-7"}, receipt="s")
    m = sub.expect_message(10)
    assert (m.text, m["session"], m["origin"]) == ("hi", "not-a-session", "sensor-7")


def test_stress_many_publishers_on_every_instance_one_order_everywhere(shared_cluster, clients):
    """Thousands of messages from STOMP and API publishers on every instance (and through
    haproxy) to one destination: every subscriber gets each once, in its publisher's order, and
    all subscribers get the same order (the destination's history order)."""
    topic = "/topic/fan-stress"
    subs = spread_subscribers(shared_cluster, clients, topic)
    n = 300
    stomp_pubs = [clients(shared_cluster.client(shared_cluster.gw_ws(i))) for i in range(3)]

    def publish_stomp(c, prefix):
        for i in range(n):
            c.send(topic, f"{prefix}-{i}", receipt=f"p{i}" if i % 50 == 49 else None)

    with ThreadPoolExecutor(7) as pool:
        jobs = [pool.submit(publish_api, shared_cluster.gw_url(i), topic, f"api{i}", n) for i in range(3)]
        jobs.append(pool.submit(publish_api, shared_cluster.lb_url, topic, "lb", n))
        jobs += [pool.submit(publish_stomp, c, f"stomp{i}") for i, c in enumerate(stomp_pubs)]
        for j in jobs:
            j.result(120)
    sources = [f"api{i}" for i in range(3)] + ["lb"] + [f"stomp{i}" for i in range(3)]
    orders = []
    for c in subs:
        frames = collect(c, n * len(sources), timeout=60)
        bodies = [f.text for f in frames]
        at = Cluster.instance_of(c)
        for source in sources:
            assert sequence(bodies, source) == list(range(n)), f"{source} messages lost, duplicated or reordered at {at}"
        seqs = [int(f["x-position"].rsplit(":", 1)[1]) for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"positions not dense at {at}"
        orders.append(bodies)
    assert all(o == orders[0] for o in orders), "subscribers saw different orders"


def test_a_backlogged_instance_pauses_reading_redis_and_loses_nothing(cluster_factory, clients):
    """server.max-fanout-backlog-bytes=1 on every instance: each message queued for another
    event loop puts a backlog over the limit, so the instance stops reading its Redis subscriber
    connection until it is delivered (messages wait in Redis). Subscribers on the other instance
    still get every message of a burst once, in order."""

    cluster = cluster_factory(replicas=0, gateways=2,
                              gateway_args=("--set", "server.threads=2", "--set", "server.max-fanout-backlog-bytes=1"))
    subs = [clients(cluster.client(cluster.gw_ws(1))) for _ in range(6)]  # over both loops of gw1
    subscribe_all(subs, "/topic/paced")
    pub = clients(cluster.client(cluster.gw_ws(0)))

    def pauses():
        return metric(requests.get(f"{cluster.gw_url(1)}/metrics", timeout=5).text, "switchboard_redis_subscriber_read_pauses_total")

    sent = send_bursts_until(pub, "/topic/paced", lambda: pauses() > 0, size=301)
    assert pauses() > 0
    for c in subs:
        assert [int(f.text) for f in collect(c, sent, timeout=60)] == list(range(sent))
