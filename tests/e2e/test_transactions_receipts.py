"""Receipts for every client command, and transactions (BEGIN/COMMIT/ABORT)."""

import pytest

from support.stompclient import encode_frame


def connected(client, gateway, version="1.2"):
    c = client(gateway)
    c.connect(version=version)
    return c


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_receipts_for_all_commands(gateway, client, version):
    c = connected(client, gateway, version)
    c.send_frame("SUBSCRIBE", {"destination": "/topic/rcpt", "id": "s", "receipt": "r-sub"})
    c.expect_receipt("r-sub")
    pub = connected(client, gateway, version)
    pub.send("/topic/rcpt", "x", receipt="r-send")
    assert c.expect_message().text == "x"
    c.send_frame("BEGIN", {"transaction": "t", "receipt": "r-begin"})
    c.expect_receipt("r-begin")
    c.send_frame("COMMIT", {"transaction": "t", "receipt": "r-commit"})
    c.expect_receipt("r-commit")
    c.send_frame("BEGIN", {"transaction": "t2", "receipt": "r-begin2"})
    c.expect_receipt("r-begin2")
    c.send_frame("ABORT", {"transaction": "t2", "receipt": "r-abort"})
    c.expect_receipt("r-abort")
    c.send_frame("UNSUBSCRIBE", {"id": "s", "receipt": "r-unsub"})
    c.expect_receipt("r-unsub")
    c.send_frame("DISCONNECT", {"receipt": "r-disc"})
    c.expect_receipt("r-disc")
    assert c.wait_closed(3)


def test_receipts_come_back_in_frame_order(gateway, client):
    c = connected(client, gateway)
    frames = [encode_frame("SUBSCRIBE", {"destination": f"/topic/ord{i}", "id": str(i), "receipt": f"r{i}"}) for i in range(20)]
    c.send_raw(b"".join(frames))
    assert [f["receipt-id"] for f in c.receive_many(20)] == [f"r{i}" for i in range(20)]


def test_disconnect_receipt_before_close(gateway, client):
    c = connected(client, gateway)
    c.send_frame("DISCONNECT", {"receipt": "last"})
    frame = c.receive(3)
    assert frame.command == "RECEIPT" and frame["receipt-id"] == "last"
    assert c.wait_closed(3)
    h = gateway.wait_health(lambda j: True)
    assert h["status"] == "ok"


def test_stomppy_disconnect_with_receipt(gateway, stomppy):
    conn, lst = stomppy(gateway)
    conn.disconnect(receipt="bye-py")
    assert "bye-py" in lst.receipts
    assert lst.wait_for(lambda: lst.disconnected, 3)


def test_transaction_delivers_only_on_commit_in_order(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx", id="t", receipt="r")
    pub = connected(client, gateway)
    pub.send_frame("BEGIN", {"transaction": "tx1", "receipt": "b"})
    pub.expect_receipt("b")
    for i in range(5):
        pub.send_frame("SEND", {"destination": "/topic/tx", "transaction": "tx1", "receipt": f"s{i}"}, f"m{i}")
    # a non-transactional send goes straight through; the transaction's receipts wait for COMMIT
    pub.send("/topic/tx", "direct", receipt="d")
    assert sub.expect_message().text == "direct"
    sub.expect_nothing(0.3)
    pub.send_frame("COMMIT", {"transaction": "tx1", "receipt": "c"})
    # Each SEND's receipt once it has run, in order, then the COMMIT's.
    for i in range(5):
        pub.expect_receipt(f"s{i}")
    pub.expect_receipt("c")
    msgs = sub.receive_many(5)
    assert [m.text for m in msgs] == [f"m{i}" for i in range(5)]
    assert all("transaction" not in m.headers for m in msgs)
    sub.expect_nothing(0.2)


def test_abort_drops_messages(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.abort", id="t", receipt="r")
    pub = connected(client, gateway)
    pub.send_frame("BEGIN", {"transaction": "tx", "receipt": "b"})
    pub.expect_receipt("b")
    pub.send_frame("SEND", {"destination": "/topic/tx.abort", "transaction": "tx", "receipt": "s"}, "never")
    pub.send_frame("ABORT", {"transaction": "tx", "receipt": "a"})
    # The aborted SEND's work never happens: no receipt for it, only the ABORT's.
    pub.expect_receipt("a")
    # The transaction is gone: committing it now is an error.
    pub.send_frame("COMMIT", {"transaction": "tx", "receipt": "c"})
    err = pub.expect_error("unknown transaction 'tx'")
    assert err["receipt-id"] == "c"
    sub.expect_nothing(0.3)


def test_disconnect_drops_open_transaction(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.disc", id="t", receipt="r")
    pub = connected(client, gateway)
    pub.send_frame("BEGIN", {"transaction": "tx"})
    pub.send_frame("SEND", {"destination": "/topic/tx.disc", "transaction": "tx", "receipt": "s"}, "never")
    pub.disconnect("bye")
    assert pub.wait_closed(3)
    sub.expect_nothing(0.3)


def test_socket_close_drops_open_transaction(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.drop", id="t", receipt="r")
    pub = connected(client, gateway)
    pub.send_frame("BEGIN", {"transaction": "tx"})
    pub.send_frame("SEND", {"destination": "/topic/tx.drop", "transaction": "tx", "receipt": "s"}, "never")
    pub.close()
    sub.expect_nothing(0.4)


def test_interleaved_transactions(gateway, client):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.multi", id="t", receipt="r")
    pub = connected(client, gateway)
    for tx in ("a", "b"):
        pub.send_frame("BEGIN", {"transaction": tx})
    for i in range(3):
        pub.send("/topic/tx.multi", f"a{i}", headers={"transaction": "a"})
        pub.send("/topic/tx.multi", f"b{i}", headers={"transaction": "b"})
    pub.send_frame("COMMIT", {"transaction": "b", "receipt": "cb"})
    pub.expect_receipt("cb")
    assert [m.text for m in sub.receive_many(3)] == ["b0", "b1", "b2"]
    pub.send_frame("ABORT", {"transaction": "a", "receipt": "aa"})
    pub.expect_receipt("aa")
    sub.expect_nothing(0.3)


def test_stomppy_transaction(gateway, client, stomppy):
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.py", id="t", receipt="r")
    conn, lst = stomppy(gateway)
    tx = conn.begin()
    conn.send("/topic/tx.py", "p1", transaction=tx)
    conn.send("/topic/tx.py", "p2", transaction=tx)
    # A message sent after them outside the transaction is the condition: it must come first.
    conn.send("/topic/tx.py", "outside")
    assert sub.expect_message().text == "outside"
    sub.expect_nothing(0.1)
    conn.commit(tx)
    assert [m.text for m in sub.receive_many(2)] == ["p1", "p2"]


def test_transaction_errors(gateway, client):
    c = connected(client, gateway)
    c.send_frame("BEGIN", {"receipt": "x"})
    assert c.expect_error("BEGIN requires a transaction header")["receipt-id"] == "x"
    c = connected(client, gateway)
    c.send_frame("BEGIN", {"transaction": "t1"})
    c.send_frame("BEGIN", {"transaction": "t1"})
    c.expect_error("transaction 't1' is already open")
    c = connected(client, gateway)
    c.send("/topic/x", "y", headers={"transaction": "t9"})
    c.expect_error("unknown transaction 't9'")
    c = connected(client, gateway)
    c.send_frame("ABORT", {"transaction": "t9"})
    c.expect_error("unknown transaction 't9'")


def test_transaction_frame_limit(gateway_factory, client):
    gw = gateway_factory("limits.max-transaction-frames=3")
    c = client(gw)
    c.connect()
    c.send_frame("BEGIN", {"transaction": "big"})
    for i in range(3):
        c.send_frame("SEND", {"destination": "/topic/x", "transaction": "big", "receipt": f"s{i}"}, str(i))
    c.send("/topic/x", "4", headers={"transaction": "big"})
    err = c.expect_error()
    assert "limit 3" in err["message"]


@pytest.mark.parametrize("bad", ["/topic/tx.*", "/app/no.route", "/queue/nope"])
def test_a_send_that_cannot_run_fails_when_it_arrives_not_at_commit(gateway, client, bad):
    # Before, the bad SEND was refused only at COMMIT, after the good one before it had been
    # delivered: half of the transaction applied.
    sub = connected(client, gateway)
    sub.subscribe("/topic/tx.half", id="1", receipt="s")
    c = connected(client, gateway)
    c.send_frame("BEGIN", {"transaction": "t"})
    c.send("/topic/tx.half", "first", headers={"transaction": "t"})
    c.send_frame("SEND", {"destination": bad, "transaction": "t", "receipt": "bad"}, "second")
    err = c.expect_error()
    assert err["receipt-id"] == "bad"
    assert bad in err["message"]
    sub.expect_nothing(0.5)


def test_transaction_byte_limit(gateway_factory, client):
    gw = gateway_factory("limits.max-transaction-bytes=10000")
    c = client(gw)
    c.connect()
    c.send_frame("BEGIN", {"transaction": "a"})
    c.send_frame("BEGIN", {"transaction": "b"})
    c.send_frame("SEND", {"destination": "/topic/x", "transaction": "a"}, "x" * 6000)
    c.send_frame("SEND", {"destination": "/topic/x", "transaction": "b", "receipt": "over"}, "x" * 6000)
    err = c.expect_error()
    assert "limit 10000 bytes per session" in err["message"] and err["receipt-id"] == "over"
