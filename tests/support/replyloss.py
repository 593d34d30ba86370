"""A TCP proxy in front of a redis-server that can lose a reply: Redis runs the command, the
client never hears back. Forwards both ways; after ``lose_reply_to(marker)``, the first
connection whose request bytes contain ``marker`` has its next reply from Redis dropped and is
closed on both sides, as a network cut, a ``CLIENT KILL`` or a crashed proxy after the command
ran would leave it. Everything else passes through unchanged, and new connections are accepted
throughout (the gateway reconnects through the proxy). ``hold()`` makes new connections wait,
accepted but not yet connected to Redis, until ``release()``: a reconnect that takes a while."""
from __future__ import annotations

import socket
import threading

from support.process import free_port


class ReplyLossProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.port = free_port()
        self._listener = socket.create_server((host, self.port), backlog=64)
        self._lock = threading.Lock()
        self._markers: list[bytes] = []
        self._connections: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        #: Markers whose reply was dropped, in order.
        self.lost: list[bytes] = []
        self._cut = threading.Condition(self._lock)
        self._open = threading.Event()
        self._open.set()
        threading.Thread(target=self._accept, daemon=True, name="replyloss-accept").start()

    def lose_reply_to(self, marker: bytes | str):
        """Arms a cut: the next request carrying `marker` runs in Redis, its reply is lost."""
        with self._lock:
            self._markers.append(marker.encode() if isinstance(marker, str) else marker)

    def hold(self):
        """New connections wait (accepted, not connected upstream) until ``release()``."""
        self._open.clear()

    def release(self):
        self._open.set()

    def wait_lost(self, count: int, timeout: float = 10.0) -> bool:
        """Waits until `count` replies were dropped in all."""
        with self._cut:
            return self._cut.wait_for(lambda: len(self.lost) >= count, timeout)

    def close(self):
        self._open.set()
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        self._listener.close()
        for pair in connections:
            self._close(pair)

    def _accept(self):
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self._open.wait()
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            pair = (downstream, upstream)
            with self._lock:
                if self._closed:
                    self._close(pair)
                    return
                self._connections.append(pair)
            # The marker found in a request, shared by the two directions of this connection.
            state = {"armed": None}
            threading.Thread(target=self._requests, args=(pair, state), daemon=True).start()
            threading.Thread(target=self._replies, args=(pair, state), daemon=True).start()

    def _requests(self, pair, state):
        downstream, upstream = pair
        tail = b""  # a marker may straddle two reads
        while True:
            try:
                data = downstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(pair)
                return
            window = tail + data
            with self._lock:
                if state["armed"] is None:
                    for marker in self._markers:
                        if marker in window:
                            self._markers.remove(marker)
                            state["armed"] = marker  # before forwarding: its reply comes after
                            break
                longest = max((len(m) for m in self._markers), default=1)
            tail = window[-(longest - 1):] if longest > 1 else b""
            try:
                upstream.sendall(data)
            except OSError:
                self._close(pair)
                return

    def _replies(self, pair, state):
        downstream, upstream = pair
        while True:
            try:
                data = upstream.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                marker = state["armed"]
            if not data or marker is not None:
                self._close(pair)
                if data and marker is not None:
                    with self._cut:
                        self.lost.append(marker)
                        self._cut.notify_all()
                return
            try:
                downstream.sendall(data)
            except OSError:
                self._close(pair)
                return

    @staticmethod
    def _close(pair):
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
