"""Counting what clients of a history destination received, for fault tests: a numbered
``Publisher`` through the HTTP API, ``drain`` (read until a condition), ``audit`` (loss,
duplicates, reorders of one client), ``positions_signal_a_gap`` and ``finish_and_count`` (all
of one publisher's subscribers at the end of a run)."""
from __future__ import annotations

import collections
import threading
import time

import requests


class Publisher(threading.Thread):
    """Publishes "0", "1", ... to `topic` through the API at `url`, one request at a time;
    `answered` holds the bodies the API answered 200 for.

    `retry_refused`: a number the API refused (any answer but 200, or no answer) is sent again
    until it is accepted, so the numbers stay dense; `refused` counts the refusals (503 while
    no Redis primary is known) and `unanswered` the requests that got no HTTP answer at all.
    `uncertain` holds the numbers sent again after an answer that leaves the outcome open (504:
    the gateway lost its Redis connection with the publish in flight; or no answer at all):
    those may legitimately arrive twice."""

    def __init__(self, url, topic, pace=0.005, retry_refused=False):
        super().__init__(daemon=True)
        self.url, self.topic, self.pace, self.retry_refused = url, topic, pace, retry_refused
        self.answered: list[int] = []
        self.refused: dict[int, int] = {}  # status code -> count
        self.unanswered = 0
        self.uncertain: set[int] = set()
        self.stop = threading.Event()

    def run(self):
        seq = 0
        with requests.Session() as http:
            while not self.stop.is_set():
                accepted = False
                try:
                    r = http.post(f"{self.url}/api/notification", json={"topic": self.topic, "message": str(seq)}, timeout=3)
                    if r.status_code == 200:
                        self.answered.append(seq)
                        accepted = True
                    else:
                        self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
                        if r.status_code == 504:
                            self.uncertain.add(seq)
                except requests.exceptions.RequestException:
                    self.unanswered += 1
                    self.uncertain.add(seq)
                if accepted or not self.retry_refused:
                    seq += 1
                time.sleep(self.pace)

    def finish(self):
        self.stop.set()
        self.join(10)


def audit(received: list[int], published: list[int], may_repeat=frozenset()):
    """(lost, duplicates, reorders) of one client's `received` bodies against `published`.
    `may_repeat`: numbers the publisher sent again after an open outcome (``Publisher.uncertain``);
    a second copy of one of those is not a duplicate."""
    got = set(received)
    lost = [p for p in published if p not in got]
    extra = collections.Counter(received)
    duplicates = sum(n - 1 - (1 if b in may_repeat and n == 2 else 0) for b, n in extra.items() if n > 1)
    reorders = sum(1 for a, b in zip(received, received[1:]) if b < a)
    return lost, duplicates, reorders


def drain(client, until, timeout=15.0, frames=None):
    """Reads messages until `until(bodies)` holds; returns the bodies and the last position.
    `frames`: a list that gets every MESSAGE frame read, for checks on their headers."""
    bodies, position = [], None
    deadline = time.monotonic() + timeout
    while not until(bodies) and time.monotonic() < deadline:
        try:
            f = client.expect_message(0.5)
        except TimeoutError:
            continue
        bodies.append(int(f.text))
        position = f["x-position"]
        if frames is not None:
            frames.append(f)
    return bodies, position


def positions_signal_a_gap(frames) -> bool:
    """Whether `frames` (in arrival order) show an explicit signal: a jump in `x-position` or a
    new epoch."""
    last = None
    for f in frames:
        epoch, seq = f["x-position"].rsplit(":", 1)
        if last is not None and (epoch != last[0] or int(seq) != last[1] + 1):
            return True
        last = (epoch, int(seq))
    return False


def finish_and_count(pub, subs, received, frames):
    """Stops the publisher, reads every subscriber up to the last accepted number, and returns
    {subscriber index: (lost, duplicates, reorders, signalled)}."""
    pub.finish()
    last = pub.answered[-1]
    result = {}
    for k, c in enumerate(subs):
        bodies, _ = drain(c, lambda b: bool(b) and b[-1] >= last, timeout=20, frames=frames[k])
        received[k] += bodies
        lost, dups, reorders = audit([b for b in received[k] if b <= last], pub.answered, pub.uncertain)
        result[k] = (lost, dups, reorders, positions_signal_a_gap(frames[k]))
    return result


def resume_then_finish(pub, subs, received, frames, topic, positions, connect, more=40, timeout=20.0):
    """After an outage: each subscriber k in `positions` is replaced by ``connect(k)`` (a
    connected client) subscribed to `topic` with ``x-resume-from: positions[k]`` (its RECEIPT
    must say ``x-recovered`` true or false); once the publisher has had `more` numbers
    accepted, ``finish_and_count``. Every refusal must have been a 503 or 504."""
    for k, position in positions.items():
        c = connect(k)
        receipt = c.subscribe(topic, id="1", receipt="r", **{"x-resume-from": position})
        assert receipt["x-recovered"] in ("true", "false"), f"resumed from {position}: {receipt.headers}"
        subs[k] = c
    before = len(pub.answered)
    deadline = time.monotonic() + timeout
    while len(pub.answered) < before + more:
        assert time.monotonic() < deadline, f"fewer than {more} numbers accepted in {timeout} s after the outage"
        time.sleep(0.05)  # poll interval
    counts = finish_and_count(pub, subs, received, frames)
    assert set(pub.refused) <= {503, 504}, f"refusals other than 503/504: {pub.refused}"
    return counts
