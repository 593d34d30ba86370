"""Logs: JSON lines on request, session id (and user) on every session line, levels per subsystem."""
import json
import signal
import subprocess

import requests

from support.paths import BINARY
from support.process import free_port, wait_until
from support.stompclient import StompClient


def run_gateway(*sets):
    port = free_port()
    args = [BINARY, "--host", "127.0.0.1", "--port", str(port)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1), 15, what="gateway up")
    return proc, port


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    return err


def test_json_logs_carry_session_ids_and_levels_per_subsystem():
    proc, port = run_gateway("log.format=json", "log.levels.session=debug", "log.levels.http=warning")
    c = StompClient(f"ws://127.0.0.1:{port}/stomp")
    c.connect()
    session = c.connected_frame["session"]
    c.send_frame("FOO", {})
    c.expect_error("unknown command 'FOO'")
    lines = [json.loads(l) for l in stop(proc).splitlines() if l.startswith("{")]
    assert lines, "no JSON log lines"
    assert all({"ts", "level", "label", "message"} <= l.keys() for l in lines)
    session_lines = [l for l in lines if l["label"] == "switchboard.session"]
    assert any(l["message"] == "session error" and l["error"] == "unknown command 'FOO'" for l in session_lines)
    assert all(l.get("session") == session for l in session_lines), session_lines
    # http is at warning: its info line "Server started" is not there; server's notice is.
    assert not any(l["label"] == "switchboard.http" and l["level"] == "info" for l in lines)
    assert any(l["label"] == "switchboard.server" and l["message"] == "switchboard listening" for l in lines)


def test_text_logs_by_default():
    proc, _ = run_gateway()
    err = stop(proc)
    assert "switchboard listening" in err and not err.lstrip().startswith("{")


def test_bad_log_format_is_refused():
    out = subprocess.run([BINARY, "--port", "0", "--set", "log.format=xml"], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "log.format must be text or json, got 'xml'" in out.stderr


def test_text_logs_escape_control_characters_from_clients():
    # A JWT `sub` with CR/LF wrote forged lines into the text log (JSON escaped them).
    from support.security import HMAC_SECRET, make_token
    proc, port = run_gateway(f"auth.jwt.hmac-secret={HMAC_SECRET}", "log.levels.session=debug")
    sub = "evil\nFAKE-LOG-LINE level=critical\r\n2026 [critical] injected\u2028x"
    try:
        c = StompClient(f"ws://127.0.0.1:{port}/stomp")
        c.connect(headers={"passcode": make_token(HMAC_SECRET, sub=sub)})
        c.send_frame("FOO", {})
        c.expect_error("unknown command 'FOO'")
    except BaseException:
        proc.kill()
        raise
    err = stop(proc)
    lines = err.splitlines()
    assert not [l for l in lines if l.startswith(("FAKE-LOG-LINE", "2026 [critical]"))], err
    # The user is still there, escaped, on the session's lines.
    assert any("evil\\nFAKE-LOG-LINE level=critical\\r\\n2026 [critical] injected\\u{2028}x" in l for l in lines), err
