"""redis-server for tests: the command line of a throwaway server (no persistence, loopback
only) and ``redis_cli``."""
from __future__ import annotations

import subprocess


def redis_server_args(port: int, directory) -> list[str]:
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no"]


def redis_cli(port: int, *args, timeout=5) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip()
