"""Access rules (auth.rules.subscribe / auth.rules.send): patterns, {sub}, role conditions,
placeholder injection, and the permission-denied ERROR that closes only the offending session."""
from __future__ import annotations

import pytest

from support.security import HMAC_SECRET, bearer, deny_send, deny_subscribe, expect_healthy, make_token

RULES_YAML = f"""
auth:
  jwt:
    hmac-secret: "{HMAC_SECRET}"
    claims: [roles]
  rules:
    subscribe: ["/topic/public.**", "/topic/user.{{sub}}.**", "/topic/admin.** if roles=admin", "/user/queue/**",
                "/topic/feed.*", "/topic/health"]
    send: ["/topic/public.chat", "/topic/user.{{sub}}.outbox", "/topic/admin.** if roles=admin,ops"]
"""


@pytest.fixture(scope="module")
def g(gw):
    return gw(yaml=RULES_YAML)


@pytest.fixture
def login(g, clients):
    def make(sub="alice", **claims):
        return clients(g, headers=bearer(make_token(HMAC_SECRET, sub=sub, **claims)))
    return make


@pytest.fixture
def healthy(g, login):
    c = login("healthy-user")
    c.subscribe("/topic/health", "h", receipt="h")
    yield c
    expect_healthy(c, g)


def test_subscribe_allowed_and_receives(g, login, healthy):
    c = login()
    c.subscribe("/topic/public.news", "1", receipt="r1")
    c.subscribe("/topic/public.**", "2", receipt="r2")
    assert g.publish("/topic/public.news", "hello").status_code == 200
    got = sorted((m["subscription"], m.text) for m in (c.expect_message(), c.expect_message()))
    assert got == [("1", "hello"), ("2", "hello")]


def test_subscribe_denied_closes_only_that_session(g, login, healthy):
    before = g.session_errors("auth")
    c = login()
    deny_subscribe(c, "/topic/private.x")
    for dest in ("/topic/**", "/topic/public", "/topic/admin.audit", "/topic/user.*.inbox", "/topic/*.news"):
        deny_subscribe(login(), dest)
    assert g.session_errors("auth") >= before + 6


def test_send_allowed_and_denied(g, login, healthy):
    sub = login("listener")
    sub.subscribe("/topic/public.**", "1", receipt="s")
    c = login()
    c.send("/topic/public.chat", "chat", receipt="sent")
    m = sub.expect_message()
    assert (m["destination"], m.text) == ("/topic/public.chat", "chat")
    deny_send(c, "/topic/public.news")  # subscribable, but not sendable
    sub.expect_nothing()
    deny_send(login(), "/topic/public.chat.x")
    deny_send(login(), "/topic/health", receipt=None)


def test_send_denied_inside_transaction(g, login, healthy):
    sub = login("listener")
    sub.subscribe("/topic/public.**", "1", receipt="s")
    c = login()
    c.send_frame("BEGIN", {"transaction": "tx1"})
    c.send_frame("SEND", {"destination": "/topic/public.news", "transaction": "tx1"}, "sneaky")
    f = c.receive()
    if f.command == "ERROR":
        assert f.get("message") == "permission denied: SEND to /topic/public.news"
    else:  # if it was buffered, COMMIT must not publish it
        c.send_frame("COMMIT", {"transaction": "tx1", "receipt": "c"})
    sub.expect_nothing(0.5)


def test_sub_placeholder(g, login, healthy):
    alice = login("alice")
    alice.subscribe("/topic/user.alice.inbox", "1", receipt="ok")
    alice.subscribe("/topic/user.alice.**", "2", receipt="ok2")
    assert g.publish("/topic/user.alice.inbox", "for alice").status_code == 200
    assert {alice.expect_message().text, alice.expect_message().text} == {"for alice"}
    deny_subscribe(login("alice"), "/topic/user.bob.inbox")
    deny_subscribe(login("alice"), "/topic/user.bob.**")
    deny_subscribe(login("alice"), "/topic/user.alicex.inbox")
    # SEND with {sub}
    bob_box = login("bob")
    bob_box.subscribe("/topic/user.bob.**", "1", receipt="ok")
    login("bob").send("/topic/user.bob.outbox", "from bob", receipt="r")
    assert bob_box.expect_message().text == "from bob"
    deny_send(login("alice"), "/topic/user.bob.outbox")
    bob_box.expect_nothing()


def test_role_rules(g, login, healthy):
    admin = login("root", roles=["admin"])
    admin.subscribe("/topic/admin.audit", "1", receipt="ok")
    admin.subscribe("/topic/admin.**", "2", receipt="ok2")
    deny_subscribe(login("eve", roles=["user"]), "/topic/admin.audit")
    deny_subscribe(login("eve"), "/topic/admin.audit")  # no roles claim at all
    deny_subscribe(login("eve", roles=["administrator"]), "/topic/admin.audit")  # no prefix match of values
    deny_subscribe(login("eve", roles="admin,ops"), "/topic/admin.audit")  # a single string is one value
    # send: if roles=admin,ops
    login("op", roles=["ops"]).send("/topic/admin.audit", "by ops", receipt="r")
    login("root2", roles=["admin"]).send("/topic/admin.audit", "by admin", receipt="r")
    got = sorted(admin.expect_message().text for _ in range(4))
    assert got == ["by admin", "by admin", "by ops", "by ops"]
    deny_send(login("eve", roles=["user"]), "/topic/admin.audit")
    admin.expect_nothing()


@pytest.mark.parametrize("sub,dest", [
    ("a.*", "/topic/user.a.*.inbox"),
    ("a.*", "/topic/user.a.x.inbox"),
    ("a.b", "/topic/user.a.b.inbox"),
    ("*", "/topic/user.*.inbox"),
    ("*", "/topic/user.bob.inbox"),
    ("**", "/topic/user.**"),
    ("a/b", "/topic/user.a/b.inbox"),
    ("a/b", "/topic/user.a.inbox"),
])
def test_placeholder_injection_matches_nothing(g, login, healthy, sub, dest):
    deny_subscribe(login(sub), dest)
    deny_send(login(sub), dest.replace(".inbox", ".outbox").replace("**", "x.outbox").replace("*", "x"))


def test_wildcard_rule_does_not_widen(g, login, healthy):
    """Rule /topic/feed.* allows one segment: a SUBSCRIBE to /topic/feed.** must not get
    /topic/feed.a.b (either refused, or never delivered what the rule does not allow)."""
    ok = login()
    ok.subscribe("/topic/feed.*", "1", receipt="ok")
    c = login()
    c.send_frame("SUBSCRIBE", {"destination": "/topic/feed.**", "id": "1", "receipt": "r"})
    f = c.receive()
    if f.command == "ERROR":
        assert f.get("message") == "permission denied: SUBSCRIBE to /topic/feed.**"
        return
    assert f.command == "RECEIPT"
    assert g.publish("/topic/feed.a.b", "not allowed by the rules").status_code == 200
    c.expect_nothing(0.5)


def test_user_queue_is_always_own(g, login, healthy):
    alice, bob = login("alice"), login("bob")
    alice.subscribe("/user/queue/notes", "1", receipt="a")
    bob.subscribe("/user/queue/notes", "1", receipt="b")
    r = g.publish_user("alice", "/queue/notes", "for alice only")
    assert r.status_code == 200, r.text
    m = alice.expect_message()
    assert (m["destination"], m.text) == ("/user/queue/notes", "for alice only")
    bob.expect_nothing()
    # Spelling another user's queue is refused (not a rule match; not a user destination).
    for dest in ("/user/bob/queue/notes", "/~user/bob/queue/notes", "/queue/notes"):
        c = login("alice")
        c.send_frame("SUBSCRIBE", {"destination": dest, "id": "1", "receipt": "r"})
        assert c.receive().command == "ERROR"
        assert c.wait_closed(5)
    assert g.publish_user("bob", "/queue/notes", "for bob").status_code == 200
    assert bob.expect_message().text == "for bob"
    alice.expect_nothing()
