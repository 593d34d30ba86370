"""A webhook backend: a threaded HTTP server on a free port that records every POST and answers
with the `reply` (dict, str or callable(request) -> dict), `status` (int or callable(request) ->
int) and `delay` set by the test."""
from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookServer:
    """`requests`: one dict per POST (path, headers, raw, json, received, and the status it was
    answered with); `bodies`: their JSON.

    `tls`: (certificate file, key file) serves https://localhost; `keep_alive`: HTTP/1.1 with
    persistent connections (HTTP/1.0, one request per connection, without); `port`: listen
    there (default: any free port). `connections` counts the connections accepted."""

    def __init__(self, tls=None, keep_alive=False, port: int = 0):
        self.requests: list[dict] = []
        self.connections = 0
        self.status = 200
        self.reply = None
        self.delay = 0.0
        self.event = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args):
                pass

            def setup(self):
                server.connections += 1
                super().setup()

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0) or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                req = {"path": self.path, "headers": dict(self.headers), "raw": raw, "json": body,
                       "received": time.monotonic()}
                server.requests.append(req)
                server.event.set()
                if server.delay:
                    time.sleep(server.delay)  # the slow backend the test asked for
                reply = server.reply(req) if callable(server.reply) else server.reply
                status = server.status(req) if callable(server.status) else server.status
                req["status"] = status
                data = b"" if reply is None else (reply.encode() if isinstance(reply, str) else json.dumps(reply).encode())
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://localhost:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def bodies(self) -> list:
        """The JSON body of every request, in order."""
        return [r["json"] for r in self.requests]

    def reset(self):
        self.requests.clear()
        self.status, self.reply, self.delay = 200, None, 0.0
        self.event.clear()

    def wait_request(self, timeout: float = 5.0) -> dict:
        assert self.event.wait(timeout), "webhook was not called"
        return self.requests[-1]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
