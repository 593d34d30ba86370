"""Helpers of the lifecycle-event tests (tests/cluster/test_cluster_lifecycle*.py): the events
and JWT configuration, ``token``/``connect`` for JWT users, and ``Backend``, two in-process
consumers of the events stream with a ledger of event ids. The consumer replicas that run as
processes of their own are ``support/lifecycle_replica.py``."""
from __future__ import annotations

import time

import jwt

from support.process import wait_until
from support.resp import Resp
from support.stompclient import StompClient

SECRET = "lifecycle-suite-hmac-secret-0123456789abcdef"
STREAM = "switchboard:events"
GROUP = "presence-backend"
LEASE_TTL_MS = 2000


def lifecycle_config(lease_ttl_ms: int = LEASE_TTL_MS, lease_renew_ms: int = 500, grace_ms: int | None = None,
                     extra_events: str = "") -> str:
    """The gateways' YAML: events on with a short lease, anonymous and HS256 JWT users.
    `extra_events`: more lines under ``events:`` (indented by two spaces)."""
    grace = f"  grace-ms: {grace_ms}\n" if grace_ms is not None else ""
    return f"""
events:
  enabled: true
  lease-ttl-ms: {lease_ttl_ms}
  lease-renew-ms: {lease_renew_ms}
{grace}{extra_events}auth:
  allow-anonymous: true
  jwt:
    hmac-secret: {SECRET}
"""


CONFIG = lifecycle_config()


def token(user: str) -> str:
    return jwt.encode({"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def connect(url: str, user: str | None, **connect_kw) -> StompClient:
    c = StompClient(url, timeout=10)
    c.connect(headers={"Authorization": f"Bearer {token(user)}"} if user else None, **connect_kw)
    return c


class Backend:
    """Two consumers of one group, as two backend replicas: XREADGROUP, handle, XACK. The ledger
    counts how often each event id was handled; ``online`` is the set the events imply (a
    ``presence-reset`` empties it; ``resets`` counts them)."""

    def __init__(self, port: int, known: "Backend | None" = None):
        """`known`: carry on from another Backend's state (new connections after a restart)."""
        self.conns = [Resp(port), Resp(port)]
        self.ledger: dict[str, int] = dict(known.ledger) if known else {}
        self.events: list[dict] = list(known.events) if known else []
        self.online: set[str] = set(known.online) if known else set()
        self.resets = known.resets if known else 0
        try:
            self.conns[0].call("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
        except Exception as e:  # an existing group is fine
            assert "BUSYGROUP" in str(e)

    def poll(self):
        for i, conn in enumerate(self.conns):
            reply = conn.call("XREADGROUP", "GROUP", GROUP, f"replica-{i}", "COUNT", "50", "BLOCK", "50", "STREAMS", STREAM, ">")
            for _, entries in reply or []:
                for entry_id, flat in entries:
                    fields = dict(zip(flat[::2], flat[1::2]))
                    self.ledger[entry_id] = self.ledger.get(entry_id, 0) + 1
                    fields["id"] = entry_id
                    self.events.append(fields)
                    if fields["type"] == "user-online":
                        self.online.add(fields["user"])
                    elif fields["type"] == "user-offline":
                        self.online.discard(fields["user"])
                    elif fields["type"] == "presence-reset":
                        # Redis lost the events before (or none came yet): the sessions still
                        # open register again, with user-online after this.
                        self.resets += 1
                        self.online.clear()
                    conn.call("XACK", STREAM, GROUP, entry_id)

    def matching(self, **want) -> list[dict]:
        return [e for e in self.events if all(e.get(k) == v for k, v in want.items())]

    def wait_for(self, what: str, condition, timeout=15.0):
        def check():
            self.poll()
            return condition()
        wait_until(check, timeout, what=what)

    def assert_each_once(self):
        twice = {k: n for k, n in self.ledger.items() if n != 1}
        assert not twice, f"events handled more than once: {twice}"
        assert len(self.ledger) == len(self.events)
