"""Processes, ports and waiting: ``free_port``, ``wait_until``, ``popen_retrying``, ``terminate``."""
from __future__ import annotations

import signal
import socket
import subprocess
import time


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, drawn below the kernel's ephemeral range (32768+ by default)
    so that no outgoing connection takes it between this check and the bind, and never the
    same port twice in this process (two servers started together once got the same port
    from `bind(0)`: a gateway found Redis on its port)."""
    import random
    for _ in range(500):
        port = random.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port between 20000 and 32000")


def free_port_block(n: int) -> int:
    """The first of `n` consecutive free ports, for tools that take a base port and add to it
    (scripts/cluster uses PORT+1..PORT+3). Drawn below the kernel's ephemeral range
    (ip_local_port_range, 32768+ by default), so outgoing connections do not take them
    between this check and the bind."""
    import random
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports")


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
