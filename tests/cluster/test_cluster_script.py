"""scripts/cluster: one command brings up Redis, 3 gateways, haproxy and 2 greeting-service
replicas, prints where to connect, and Ctrl-C tears everything down."""
import os
import queue
import signal
import subprocess
import threading
import time

from support.paths import REPO as ROOT
from support.process import free_port, free_port_block, wait_until
from support.stompclient import StompClient


def test_cluster_script_up_answer_and_teardown():
    port, redis_port = free_port_block(4), free_port()
    env = dict(os.environ, PORT=str(port), REDIS_PORT=str(redis_port))
    proc = subprocess.Popen([str(ROOT / "scripts" / "cluster")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    # The script's output is read by a thread, so the deadline holds even while it is silent.
    # With SWITCHBOARD_BIN set (scripts/test sets it) the script runs that build instead of
    # building; without it, it builds first.
    out: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in proc.stdout], daemon=True).start()
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any("Ctrl-C to stop" in l for l in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            try:
                lines.append(out.get(timeout=0.5))
            except queue.Empty:
                pass
        assert any(f"ws://localhost:{port}/stomp" in l for l in lines)
        c = StompClient(f"ws://127.0.0.1:{port}/stomp", timeout=10)
        c.connect()
        c.subscribe("/topic/greetings", id="1", receipt="r")
        c.send("/app/greet", "script", receipt="s")
        f = c.expect_message(15)
        assert f.text == "Hello, script!" and f["x-processed-by"].startswith("greeting-")
        c.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    wait_until(lambda: subprocess.run(["pgrep", "-f", f"--port {port + 1}"], capture_output=True).returncode != 0,
               timeout=10, what="gateways stopped")
    assert subprocess.run(["redis-cli", "-p", str(redis_port), "PING"], capture_output=True, text=True).stdout.strip() != "PONG"
