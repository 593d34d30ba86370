"""Idempotency keys (embedded broker): an HTTP publish repeated with the same `Idempotency-Key`
(or `idempotencyKey` field), or a STOMP SEND repeated with the same `idempotency-key` header
(a client that reconnected before its RECEIPT), within 10 minutes, is not delivered again;
keys are per destination."""
import requests

from support.burst import subscribed_clients


def post(gateway, body, **headers):
    return requests.post(gateway.base + "/api/notification", json=body, headers=headers, timeout=5)


def test_a_retried_publish_is_delivered_once(gateway, client):
    c, = subscribed_clients(gateway, client, "/topic/idem.e2e", 1)
    first = post(gateway, {"topic": "/topic/idem.e2e", "message": "one"}, **{"Idempotency-Key": "k-1"})
    again = post(gateway, {"topic": "/topic/idem.e2e", "message": "one"}, **{"Idempotency-Key": "k-1"})
    by_field = post(gateway, {"topic": "/topic/idem.e2e", "message": "one", "idempotencyKey": "k-1"})
    other = post(gateway, {"topic": "/topic/idem.e2e", "message": "two", "idempotencyKey": "k-2"})
    assert [r.status_code for r in (first, again, by_field, other)] == [200] * 4
    assert "id" in first.json() and "duplicate" not in first.json()
    assert again.json() == {"duplicate": True, "topic": "/topic/idem.e2e"}
    assert by_field.json() == again.json()
    assert c.expect_message().text == "one"
    assert c.expect_message().text == "two"
    c.expect_nothing(0.3)


def test_a_bad_key_is_a_400_naming_the_field(gateway):
    r = post(gateway, {"topic": "/topic/idem.bad", "message": "x", "idempotencyKey": "k" * 257})
    assert r.status_code == 400 and r.json()["field"] == "idempotencyKey"
    r = post(gateway, {"topic": "/topic/idem.bad", "message": "x", "idempotencyKey": "a"}, **{"Idempotency-Key": "b"})
    assert r.status_code == 400 and r.json()["field"] == "Idempotency-Key"


def test_a_send_repeated_after_a_reconnect_is_delivered_once(gateway, client):
    sub, = subscribed_clients(gateway, client, "/topic/idem.stomp", 1)
    first = client(gateway)
    first.connect()
    first.send("/topic/idem.stomp", "hello", headers={"idempotency-key": "phone-1"}, receipt="a")
    first.close()  # as if the RECEIPT had been lost with the connection
    again = client(gateway)
    again.connect()
    again.send("/topic/idem.stomp", "hello", headers={"idempotency-key": "phone-1"}, receipt="b")  # received again
    again.send("/topic/idem.stomp", "next", headers={"idempotency-key": "phone-2"}, receipt="c")
    assert sub.expect_message().text == "hello"
    assert sub.expect_message().text == "next"
    sub.expect_nothing(0.3)


def test_a_bad_send_key_is_an_error(gateway, client):
    c = client(gateway)
    c.connect()
    c.send_frame("SEND", {"destination": "/topic/idem.stomp", "idempotency-key": "k" * 257}, "x")
    c.expect_error("SEND header 'idempotency-key' must be 1 to 256 bytes")


def test_a_bad_key_in_a_transaction_is_refused_when_it_arrives(gateway, client):
    sub, = subscribed_clients(gateway, client, "/topic/idem.tx", 1)
    c = client(gateway)
    c.connect()
    c.send_frame("BEGIN", {"transaction": "t1"})
    c.send("/topic/idem.tx", "first", headers={"transaction": "t1"})
    c.send_frame("SEND", {"destination": "/topic/idem.tx", "transaction": "t1", "idempotency-key": ""}, "x")
    c.expect_error("SEND header 'idempotency-key' must be 1 to 256 bytes")
    sub.expect_nothing(0.3)  # the transaction never ran
