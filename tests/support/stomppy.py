"""stomp.py (the third-party client, over WebSocket) with a listener that records frames:
``connect_stomppy(gateway)`` -> (connection, ``Collector``)."""
from __future__ import annotations

import threading

import stomp


class Collector(stomp.ConnectionListener):
    """stomp.py listener recording frames, with timeout-bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.messages: list[tuple[dict, str]] = []
        self.errors: list[tuple[dict, str]] = []
        self.receipts: list[str] = []
        self.receipt_headers: dict[str, dict] = {}
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.disconnected = False

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_message(self, frame):
        self._add(lambda: self.messages.append((dict(frame.headers), frame.body)))

    def on_error(self, frame):
        self._add(lambda: self.errors.append((dict(frame.headers), frame.body)))

    def on_receipt(self, frame):
        def add():
            self.receipts.append(frame.headers.get("receipt-id"))
            self.receipt_headers[frame.headers.get("receipt-id")] = dict(frame.headers)
        self._add(add)

    def on_heartbeat(self):
        self._add(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_heartbeat_timeout(self):
        self._add(lambda: setattr(self, "heartbeat_timeouts", self.heartbeat_timeouts + 1))

    def on_disconnected(self):
        self._add(lambda: setattr(self, "disconnected", True))

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[tuple[dict, str]]:
        assert self.wait_for(lambda: len(self.messages) >= n, timeout), \
            f"stomp.py got {len(self.messages)} of {n} messages (errors: {self.errors})"
        return list(self.messages)

    def wait_receipt(self, receipt: str, timeout: float = 5.0) -> dict:
        """Waits for RECEIPT `receipt` and returns its headers."""
        assert self.wait_for(lambda: receipt in self.receipts, timeout), f"no receipt {receipt} (errors: {self.errors})"
        return self.receipt_headers[receipt]

    def wait_error(self, timeout: float = 5.0) -> tuple[dict, str]:
        assert self.wait_for(lambda: self.errors, timeout), "stomp.py got no ERROR"
        return self.errors[0]


def connect_stomppy(gw, heartbeats=(0, 0), connect: bool = True):
    """A stomp.py WebSocket connection to `gw` (a Gateway) with a Collector; connected unless `connect` is False."""
    # stomp.py gives up on the server after 1.5 × its heart-beat interval by default: with 300 ms
    # beats and the server's 250 ms timer that left 200 ms of slack on a loaded machine.
    conn = stomp.WSConnection([("127.0.0.1", gw.port)], ws_path="/stomp", heartbeats=heartbeats,
                              reconnect_attempts_max=1, heart_beat_receive_scale=4.0)
    listener = Collector()
    conn.set_listener("test", listener)
    if connect:
        conn.connect(wait=True)
    return conn, listener
