"""Connecting: version negotiation by accept-version and by WebSocket subprotocol."""
import pytest
import requests

from support.stompclient import StompClient


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connect_with_accept_version(gateway, client, version):
    c = client(gateway)
    frame = c.connect(version=version)
    assert frame["version"] == version
    assert frame["server"] == "switchboard/0.1"
    assert frame["session"]
    # No heart-beat header means 0,0: CONNECTED states the values in force, none either way.
    assert frame["heart-beat"] == "0,0"


def test_connected_heart_beat_is_what_is_in_force(gateway, client):
    # Server 10000,10000; the spec's arithmetic: the server sends every max(sx, cy) and
    # expects every max(cx, sy), each 0 when either side says 0.
    for asked, answered in [("0,0", "0,0"), ("1000,2000", "10000,10000"), ("0,20000", "20000,0"), ("30000,0", "0,30000")]:
        c = client(gateway)
        assert c.connect(heartbeat=asked)["heart-beat"] == answered, asked


def test_connect_without_accept_version_is_1_0(gateway, client):
    c = client(gateway)
    frame = c.connect(version=None)
    assert frame["version"] == "1.0"


def test_accept_version_list_picks_highest_common(gateway, client):
    c = client(gateway)
    assert c.connect(version="1.0,1.1,2.0")["version"] == "1.1"


@pytest.mark.parametrize("offer,chosen", [
    (["v10.stomp"], "v10.stomp"),
    (["v11.stomp"], "v11.stomp"),
    (["v12.stomp"], "v12.stomp"),
    (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
    (["v10.stomp", "v11.stomp"], "v11.stomp"),
])
def test_subprotocol_offer_is_echoed(gateway, client, offer, chosen):
    c = client(gateway, subprotocols=offer)
    assert c.subprotocol == chosen
    version = {"v10.stomp": "1.0", "v11.stomp": "1.1", "v12.stomp": "1.2"}[chosen]
    frame = c.connect(version=version)
    assert frame["version"] == version


def test_subprotocol_only_v10_without_accept_version(gateway, client):
    c = client(gateway, subprotocols=["v10.stomp"])
    assert c.subprotocol == "v10.stomp"
    frame = c.connect(version=None)
    assert frame["version"] == "1.0"
    # 1.0 session works end to end: subscribe without id, receive a message.
    c.send_frame("SUBSCRIBE", {"destination": "/topic/v10only", "receipt": "r"})
    c.expect_receipt("r")
    assert gateway.publish("/topic/v10only", "hello 1.0").status_code == 200
    msg = c.expect_message()
    assert msg.text == "hello 1.0"
    assert msg["destination"] == "/topic/v10only"


def test_no_subprotocol_offered(gateway, client):
    c = client(gateway)
    assert c.subprotocol is None
    assert c.connect(version="1.2")["version"] == "1.2"


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_stomp_frame_instead_of_connect(gateway, client, version):
    c = client(gateway)
    frame = c.connect(version=version, command="STOMP")
    assert frame.command == "CONNECTED"
    assert frame["version"] == version


def test_connect_receipt(gateway, client):
    c = client(gateway)
    c.connect(headers={"receipt": "c1"})
    c.expect_receipt("c1")


def test_session_ids_are_unique(gateway, client):
    ids = {client(gateway).connect()["session"] for _ in range(5)}
    assert len(ids) == 5


def test_health_counts_sessions(gateway, client):
    before = gateway.health()
    assert before["status"] == "ok" and before["engine"] == "memory"
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/health-count", id="h", receipt="r")
    h = gateway.health()
    assert h["sessions"] >= before["sessions"] + 1
    assert h["connections"] >= before["connections"] + 1
    assert h["subscriptions"] >= before["subscriptions"] + 1
    c.disconnect()
    c.close()
    after = gateway.wait_health(lambda j: j["sessions"] == before["sessions"])
    assert after["sessions"] == before["sessions"]
    assert after["subscriptions"] == before["subscriptions"]


def test_stomppy_connects_and_exchanges(gateway, stomppy):
    conn, listener = stomppy(gateway)
    assert conn.is_connected()
    conn.subscribe("/topic/stomppy-basic", id="1", receipt="sub")
    listener.wait_receipt("sub")
    conn.send("/topic/stomppy-basic", "from stomp.py", headers={"x-k": "v"}, receipt="s1")
    headers, body = listener.wait_messages(1)[0]
    assert body == "from stomp.py"
    assert headers["x-k"] == "v"
    assert headers["destination"] == "/topic/stomppy-basic"
    assert headers["subscription"] == "1"
    listener.wait_receipt("s1")


def test_stomppy_and_own_client_interop(gateway, client, stomppy):
    conn, listener = stomppy(gateway)
    conn.subscribe("/topic/interop", id="a", receipt="ra")
    listener.wait_receipt("ra")
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/interop.back", id="b", receipt="rb")
    # Own client publishes; stomp.py receives.
    c.send("/topic/interop", "own -> stomp.py", headers={"color": "blue"}, receipt="s")
    headers, body = listener.wait_messages(1)[0]
    assert body == "own -> stomp.py" and headers["color"] == "blue"
    # stomp.py publishes; own client receives.
    conn.send("/topic/interop.back", "stomp.py -> own", headers={"shape": "round"})
    msg = c.expect_message()
    assert msg.text == "stomp.py -> own" and msg["shape"] == "round"
    assert msg["subscription"] == "b"


def test_http_health_endpoint_json(gateway):
    r = requests.get(gateway.base + "/health", timeout=2)
    assert r.status_code == 200
    j = r.json()
    for key in ("status", "engine", "instance", "connections", "sessions", "subscriptions", "destinations"):
        assert key in j


def test_a_restart_with_the_same_instance_id_gives_out_no_session_or_message_id_again(gateway_factory, client):
    # With a fixed instance.id (a StatefulSet's pod name), session and message ids restarted at
    # 1 in the next process: a reply addressed to a session of the old process (a webhook's
    # "target": "sender", SwitchboardKit.reply(to:)) reached the new session with that id,
    # another user's; clients de-duplicating by message-id dropped new messages.
    seen_sessions, seen_messages = set(), set()
    for _ in range(2):
        gw = gateway_factory("instance.id=pod-0")
        c = client(gw)
        session = c.connect()["session"]
        assert session.startswith("pod-0-s-") and session not in seen_sessions
        seen_sessions.add(session)
        c.subscribe("/topic/ids", id="1", receipt="r")
        answer = gw.publish("/topic/ids", "x").json()
        assert answer["id"].startswith("pod-0-") and answer["id"] not in seen_messages
        seen_messages.add(answer["id"])
        assert c.expect_message()["message-id"] == answer["id"]
        c.close()
        assert gw.stop() == 0
