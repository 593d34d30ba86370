"""Batch publishing: POST /api/notifications with a JSON array; one result per item, in order."""
import requests


def post_batch(gateway, items, **kw):
    return requests.post(gateway.base + "/api/notifications", json=items, timeout=10, **kw)


def test_batch_delivers_every_item_in_order_with_one_result_each(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/batch.**", id="b", receipt="r")
    items = [{"topic": f"/topic/batch.{i % 3}", "message": f"m{i}", "headers": {"seq": str(i)}} for i in range(50)]
    r = post_batch(gateway, items)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["published"] == 50 and j["failed"] == 0
    assert [x["topic"] for x in j["results"]] == [i["topic"] for i in items]
    frames = c.receive_many(50)
    assert [m.text for m in frames] == [f"m{i}" for i in range(50)]
    assert [m["message-id"] for m in frames] == [x["id"] for x in j["results"]]
    assert [m["seq"] for m in frames] == [str(i) for i in range(50)]


def test_batch_with_bad_items_is_207_and_publishes_the_rest(gateway, client):
    c = client(gateway)
    c.connect()
    c.subscribe("/topic/batch.mixed", id="b", receipt="r")
    r = post_batch(gateway, [
        {"topic": "/topic/batch.mixed", "message": "first"},
        {"topic": "/topic/batch.mixed"},
        "not an object",
        {"topic": "/queue/x", "message": "not a topic"},
        {"topic": "/topic/batch.mixed", "message": "last"},
    ])
    assert r.status_code == 207, r.text
    j = r.json()
    assert j["published"] == 2 and j["failed"] == 3
    ok, missing, not_object, wrong_prefix, last = j["results"]
    assert ok["topic"] == "/topic/batch.mixed" and last["topic"] == "/topic/batch.mixed"
    assert missing == {"error": "missing field 'message'", "field": "message", "status": 400}
    assert not_object == {"error": "each notification must be a JSON object", "field": None, "status": 400}
    assert wrong_prefix["field"] == "topic" and wrong_prefix["status"] == 400
    assert [m.text for m in c.receive_many(2)] == ["first", "last"]
    c.expect_nothing(0.3)


def test_whole_batch_errors(gateway):
    for body, status, error in [
        (b"{}", 400, "request body must be a JSON array of notifications"),
        (b"[]", 400, "request body must hold at least one notification"),
        (b"nope", 400, "request body must be a JSON array of notifications"),
    ]:
        r = requests.post(gateway.base + "/api/notifications", data=body, timeout=5)
        assert r.status_code == status and r.json() == {"error": error, "field": None}, r.text


def test_batch_larger_than_the_limit_is_413(gateway_factory):
    gw = gateway_factory("http.max-batch-items=3")
    r = requests.post(gw.base + "/api/notifications", json=[{"topic": "/topic/x", "message": "m"}] * 4, timeout=5)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "batch of 4 notifications is larger than 3"
    assert requests.post(gw.base + "/api/notifications", json=[{"topic": "/topic/x", "message": "m"}] * 3,
                         timeout=5).status_code == 200
