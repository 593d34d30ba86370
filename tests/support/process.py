"""Processes, ports and waiting: ``free_port``, ``wait_until``, ``popen_retrying``, ``terminate``."""
from __future__ import annotations

import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Polls `predicate` (exceptions count as false) until it returns something true, and
    returns that; fails naming `what` (and the last value or exception) after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (a server still starting, a page re-rendering)
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        time.sleep(interval)  # poll interval


def popen_retrying(args, **kw) -> subprocess.Popen:
    """Popen, retried while the binary is being rewritten by a concurrent build (ETXTBSY)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return subprocess.Popen(args, **kw)
        except OSError as exc:
            if exc.errno != 26 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # ETXTBSY retry interval


def terminate(proc: subprocess.Popen, timeout: float = 10.0, send: bool = True):
    """SIGTERM (unless `send` is False: already sent), then wait; returns the exit code, or
    "killed" when it had to be killed after `timeout`."""
    if send and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"
