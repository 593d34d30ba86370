"""User destinations on one gateway: /user/queue/<name> is always the session's own user,
reached through the API, webhook replies; anonymous sessions' queues are private."""
from __future__ import annotations

import urllib.parse

import pytest
import requests

from support.security import HMAC_SECRET, bearer, make_token


@pytest.fixture(scope="module")
def g(gw, webhook):
    return gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "auth.allow-anonymous=true",
              "routes.names=hook", "routes.hook.destination=/app/hook", f"routes.hook.url={webhook.url}")


@pytest.fixture
def login(g, clients):
    def make(sub=None, dest="/user/queue/notes", ids=("1",)):
        c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub=sub)) if sub else {})
        for i in ids:
            c.subscribe(dest, i, receipt=f"sub-{i}")
        return c
    return make


def test_api_user_notification_reaches_every_session_of_the_user_only(g, login):
    a1, a2 = login("alice"), login("alice")
    a3 = login("alice", ids=("x", "y"))  # two subscriptions: once per subscription
    bob, anon = login("bob"), login(None)
    r = g.publish_user("alice", "/queue/notes", "hi alice")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["topic"] == "/queue/notes" and body["user"] == "alice" and body["id"]
    for c in (a1, a2):
        m = c.expect_message()
        assert (m["destination"], m.text, m["subscription"]) == ("/user/queue/notes", "hi alice", "1")
        assert m["message-id"] == body["id"]
        c.expect_nothing()
    assert sorted(a3.expect_message()["subscription"] for _ in range(2)) == ["x", "y"]
    a3.expect_nothing()
    bob.expect_nothing(0.1)
    anon.expect_nothing(0.1)


@pytest.mark.parametrize("topic", ["/topic/notes", "notes", "/user/queue/notes", "/queue", "/~user/bob/queue/notes"])
def test_api_user_topic_must_be_a_queue(g, login, topic):
    bob = login("bob")
    r = g.publish_user("alice", topic, "x")
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "field 'topic' must start with /queue/ for a user destination", "field": "topic"}
    bob.expect_nothing(0.1)


def test_user_names_are_not_patterns(g, login):
    """Users whose names contain separators or wildcards only get their own messages."""
    names = ["a.b", "a.*", "*", "a", "**", "a.b.c"]  # none needs percent-encoding in a URL path
    sessions = {n: login(n) for n in names}
    for target in names:
        r = requests.post(f"{g.base}/api/users/{target}/notification",
                          json={"topic": "/queue/notes", "message": f"for {target}"}, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == target
        m = sessions[target].expect_message()
        assert m.text == f"for {target}"
        for other, c in sessions.items():
            if other != target:
                c.expect_nothing(0.05)


@pytest.mark.parametrize("name", ["a/b", "a b", "jos\u00e9", "a%b", "a?b"])
def test_api_user_path_is_percent_decoded(g, login, name):
    c = login(name)
    r = requests.post(f"{g.base}/api/users/{urllib.parse.quote(name, safe='')}/notification",
                      json={"topic": "/queue/notes", "message": "encoded"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == name
    assert c.expect_message().text == "encoded"


def test_clients_cannot_reach_other_users_queues(g, login, clients):
    bob = login("bob")
    for dest in ("/user/bob/queue/notes", "/~user/bob/queue/notes", "/queue/notes", "/user/**", "/~user/**"):
        c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="mallory")))
        c.send_frame("SUBSCRIBE", {"destination": dest, "id": "1", "receipt": "r"})
        assert c.receive().command == "ERROR", dest
        assert c.wait_closed(5)
    for dest in ("/user/queue/notes", "/user/bob/queue/notes", "/~user/bob/queue/notes", "/queue/notes"):
        c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="mallory")))
        c.send_frame("SEND", {"destination": dest, "receipt": "r"}, "spoof")
        assert c.receive().command == "ERROR", dest
        assert c.wait_closed(5)
    bob.expect_nothing()
    # A wildcard user subscription stays inside the own user.
    m = login("mallory", dest="/user/queue/*")
    assert g.publish_user("bob", "/queue/notes", "bob's").status_code == 200
    assert bob.expect_message().text == "bob's"
    m.expect_nothing()


def test_webhook_user_reply_and_anonymous_sender_answer(g, login, webhook):
    webhook.reply = lambda req: {"replies": [
        {"destination": "/user/queue/answers", "body": "answer for you", "target": "sender"},
        {"destination": "/queue/notes", "user": "alice", "body": "hook says hi alice"},
    ]}
    anon1 = login(None, dest="/user/queue/answers")
    anon2 = login(None, dest="/user/queue/answers")
    alice = login("alice")
    alice_answers = login("alice", dest="/user/queue/answers")
    bob = login("bob")
    anon1.send_frame("SEND", {"destination": "/app/hook", "receipt": "q"}, "question")
    m = anon1.receive_commands("MESSAGE", "RECEIPT")["MESSAGE"]
    assert webhook.bodies[-1]["user"] is None
    assert (m["destination"], m.text) == ("/user/queue/answers", "answer for you")
    m = alice.expect_message()
    assert (m["destination"], m.text) == ("/user/queue/notes", "hook says hi alice")
    anon2.expect_nothing(0.2)
    alice_answers.expect_nothing(0.05)
    bob.expect_nothing(0.05)
    # An authenticated sender: the webhook is told who it is, and sender answers are its own.
    sender = login("carol", dest="/user/queue/answers")
    other_carol = login("carol", dest="/user/queue/answers")
    sender.send_frame("SEND", {"destination": "/app/hook", "receipt": "q"}, "question")
    assert sender.receive_commands("MESSAGE", "RECEIPT")["MESSAGE"].text == "answer for you"
    assert webhook.bodies[-1]["user"] == "carol"
    assert alice.expect_message().text == "hook says hi alice"
    other_carol.expect_nothing(0.2)  # target sender: only the sending session


def test_anonymous_queue_not_reachable_by_a_user_named_like_it(g, login):
    """Anonymous sessions' /user/... subscriptions are private to that session: an
    authenticated user whose sub looks like the anonymous session's internal name must not
    share its queue."""
    anon = login(None, dest="/user/queue/answers")
    session = anon.connected_frame["session"]
    twin = login("~" + session, dest="/user/queue/answers")
    assert twin.connected_frame["user-name"] == "~" + session
    r = requests.post(f"{g.base}/api/users/{urllib.parse.quote('~' + session, safe='')}/notification",
                      json={"topic": "/queue/answers", "message": "for the token user ~" + session}, timeout=5)
    assert r.status_code == 200
    assert twin.expect_message().text == "for the token user ~" + session
    anon.expect_nothing(0.3)


def test_batch_item_with_a_user_reaches_that_user_only(g, login):
    alice, bob = login("alice"), login("bob")
    r = requests.post(g.base + "/api/notifications", timeout=5, json=[
        {"topic": "/queue/notes", "user": "alice", "message": "for alice"},
        {"topic": "/queue/notes", "user": "", "message": "nobody"},
        {"topic": "/queue/notes", "message": "no user: not a broker destination"},
    ])
    assert r.status_code == 207, r.text
    ok, empty_user, no_user = r.json()["results"]
    assert ok["user"] == "alice" and ok["topic"] == "/queue/notes"
    assert empty_user == {"error": "field 'user' must be a non-empty string", "field": "user", "status": 400}
    assert no_user["field"] == "topic"
    m = alice.expect_message()
    assert (m["destination"], m.text, m["message-id"]) == ("/user/queue/notes", "for alice", ok["id"])
    alice.expect_nothing(0.1)
    bob.expect_nothing(0.1)


def test_a_catch_all_broker_prefix_does_not_reach_the_routing_forms(gw, clients):
    """With `destinations.broker-prefixes=/` (accepted at start-up) the gateway's own routing
    forms `/~user/<name>/…` and `/~session/<id>/…` were broker destinations: a probe's mallory
    subscribed to `/~user/*/queue/**` and got bob's private messages, and sent to
    `/~user/bob/queue/inbox` a message bob received. They are never broker destinations now."""
    g = gw(f"auth.jwt.hmac-secret={HMAC_SECRET}", "destinations.broker-prefixes=/")
    bob = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="bob")))
    bob.subscribe("/user/queue/inbox", "1", receipt="r")
    for dest in ("/~user/*/queue/**", "/~user/bob/queue/inbox", "/~session/**"):
        c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="mallory")))
        c.send_frame("SUBSCRIBE", {"destination": dest, "id": "1", "receipt": "r"})
        assert c.receive().command == "ERROR", dest
        assert c.wait_closed(5)
    c = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="mallory")))
    c.send_frame("SEND", {"destination": "/~user/bob/queue/inbox", "receipt": "r"}, "forged")
    assert c.receive().command == "ERROR"
    r = requests.post(g.base + "/api/notification", json={"topic": "/~user/bob/queue/inbox", "message": "forged"}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "topic", r.text
    # Wildcards under the catch-all prefix are broker subscriptions, but never match the
    # routing forms: a probe's `/**` got every user's private messages.
    spies = []
    for dest in ("/**", "/*/bob/queue/*", "/*/bob/**"):
        spy = clients(g, headers=bearer(make_token(HMAC_SECRET, sub="mallory")))
        spy.subscribe(dest, "1", receipt="r")
        spies.append(spy)
    # `/user/queue/…` is a user destination: the API's plain topic refuses it (it reached no
    # user-queue subscriber, and answered 200).
    r = requests.post(g.base + "/api/notification", json={"topic": "/user/queue/inbox", "message": "x"}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "topic", r.text
    # A plain topic under the catch-all prefix still works, and bob got nothing forged.
    assert g.publish_user("bob", "/queue/inbox", "for bob").status_code == 200
    assert bob.expect_message().text == "for bob"
    assert g.publish("/news/today", "for all").status_code == 200
    assert spies[0].expect_message().text == "for all"
    for spy in spies:
        spy.expect_nothing(0.3)
    bob.expect_nothing(0.3)


def test_a_name_only_canonically_equal_to_another_users_is_refused(g, login, clients):
    """`josé` with a precomposed é (NFC) and `jose` + a combining accent (NFD) differ in bytes
    but are equal to Swift's string comparison: a probe's user named with the second read the
    first's queue and its history, matched the first's access rules and used up its session
    limit. Names and destinations are accepted only in NFC now: the token is refused, and so
    are a destination or an API user in another form; the NFC user works as before."""
    nfc, nfd = "jos\u00e9", "jose\u0301"
    victim = login(nfc)
    c = clients(g, connect=False)
    f = c.connect(headers={**bearer(make_token(HMAC_SECRET, sub=nfd)), "receipt": "c"}, expect_connected=False)
    assert f.command == "ERROR" and "normalization form C" in f["message"], f.headers
    for frame, headers in (("SUBSCRIBE", {"destination": f"/topic/inbox.{nfd}", "id": "1"}),
                           ("SEND", {"destination": f"/topic/inbox.{nfd}"})):
        c = clients(g)
        c.send_frame(frame, {**headers, "receipt": "r"}, "x")
        error = c.expect_error()
        assert "is not in Unicode normalization form C (NFC)" in error["message"], error.headers
    r = requests.post(f"{g.base}/api/users/{urllib.parse.quote(nfd)}/notification",
                      json={"topic": "/queue/notes", "message": "x"}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "user", r.text
    r = requests.post(f"{g.base}/api/notification", json={"topic": f"/topic/inbox.{nfd}", "message": "x"}, timeout=5)
    assert r.status_code == 400 and r.json()["field"] == "topic", r.text
    assert g.publish_user(nfc, "/queue/notes", "for the victim").status_code == 200
    assert victim.expect_message().text == "for the victim"
