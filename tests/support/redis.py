"""redis-server for tests: the command line of a throwaway server (no persistence, loopback
only) and ``redis_cli``."""
from __future__ import annotations

import re
import subprocess
import threading

from support.process import wait_until


def redis_server_args(port: int, directory) -> list[str]:
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no"]


def redis_cli(port: int, *args, timeout=5) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip()


class ClientKillStorm:
    """`CLIENT KILL TYPE normal` (the command connections, not Pub/Sub ones) every `interval`
    seconds on a thread, until `stop()`; `killed` counts the connections killed."""

    def __init__(self, port: int, interval: float):
        self.port, self.interval = port, interval
        self.counts: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.is_set():
            out = redis_cli(self.port, "CLIENT", "KILL", "TYPE", "normal")
            self.counts.append(int(out) if out.strip().isdigit() else 0)
            self._done.wait(self.interval)

    @property
    def killed(self) -> int:
        return sum(self.counts)

    def stop(self):
        self._done.set()
        self._thread.join(10)


def pause_until_replicated(cli, timeout: float = 30.0):
    """Holds the clients' writes on a primary (``CLIENT PAUSE … WRITE``, for `timeout` at most)
    and waits until every replica has acknowledged all it wrote (the offsets in ``INFO
    replication``; replicas acknowledge once a second). `cli(*args)` runs redis-cli against the
    primary. Replication is asynchronous: a write acknowledged but not yet replicated is lost
    in a failover (a Redis property), so a test that kills the primary calls this first to see
    what the gateways do, not that window; the held writes stay unanswered."""
    cli("CLIENT", "PAUSE", str(int(timeout * 1000)), "WRITE")

    def caught_up():
        info = cli("INFO", "replication")
        written = re.search(r"master_repl_offset:(\d+)", info)
        acknowledged = [int(o) for o in re.findall(r"slave\d+:.*?offset=(\d+)", info)]
        return bool(written and acknowledged) and min(acknowledged) >= int(written.group(1))
    wait_until(caught_up, timeout, 0.05, what="the replicas caught up with the primary")


class TLSFiles:
    """A throw-away PKI made with ``openssl`` in `directory`: ``ca``, a server certificate for
    localhost and 127.0.0.1 (``server``, ``server_key``) and a client certificate (``client``,
    ``client_key``) signed by it, one for redis.example.com only (``other_name``,
    ``other_name_key``), and an unrelated ``other_ca``."""

    def __init__(self, directory):
        self.dir = directory
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def run(*args):
            subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)

        for ca in ("ca", "other-ca"):
            run("req", "-x509", *key, "-days", "2", "-subj", f"/CN=Switchboard test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
        for name, subject, ext in (("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                                   ("client", "/CN=switchboard-client", "extendedKeyUsage=clientAuth\n"),
                                   ("other-name", "/CN=redis.example.com", "subjectAltName=DNS:redis.example.com\nextendedKeyUsage=serverAuth\n")):
            (directory / f"{name}.ext").write_text(ext)
            run("req", *key, "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        self.ca, self.other_ca = directory / "ca.pem", directory / "other-ca.pem"
        self.server, self.server_key = directory / "server.pem", directory / "server.key"
        self.client, self.client_key = directory / "client.pem", directory / "client.key"
        self.other_name, self.other_name_key = directory / "other-name.pem", directory / "other-name.key"


def redis_tls_server_args(port: int, directory, tls: TLSFiles, auth_clients: bool = False, other_name: bool = False) -> list[str]:
    """A TLS-only server (`--port 0 --tls-port port`); `auth_clients`: mTLS required;
    `other_name`: it presents the certificate for redis.example.com."""
    cert, key = (tls.other_name, tls.other_name_key) if other_name else (tls.server, tls.server_key)
    return ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(tls.ca),
            "--tls-auth-clients", "yes" if auth_clients else "no",
            "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", "--appendonly", "no"]


def redis_tls_cli(port: int, tls: TLSFiles, *args, timeout=5, server_name: str | None = None) -> str:
    """redis-cli over TLS with the client certificate; `server_name`: SNI and expected name."""
    sni = ["--sni", server_name] if server_name else []
    out = subprocess.run(["redis-cli", "--tls", "--cacert", str(tls.ca), "--cert", str(tls.client), "--key", str(tls.client_key),
                          *sni, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip()
