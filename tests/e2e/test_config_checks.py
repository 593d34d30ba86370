"""Configuration mistakes are loud: the real binary refuses to start on an unknown key (YAML
file or --set) or a bad value, naming the key (and the closest known one); an unknown
SWITCHBOARD_* environment variable is a warning in the log."""
import os
import subprocess

import pytest

from support.gateway import Gateway
from support.paths import BINARY, REPO


def run(*args, env=None):
    return subprocess.run([BINARY, "--port", "0", *args], capture_output=True, text=True, timeout=20,
                          env={**os.environ, **(env or {})})


def refused(out, message):
    assert out.returncode != 0, f"started; stderr:\n{out.stderr}"
    assert message in out.stderr, out.stderr


def test_unknown_set_key_is_refused_with_a_suggestion():
    refused(run("--set", "redis.ulr=redis://127.0.0.1:6379"), "unknown key redis.ulr; did you mean redis.url?")


def test_unknown_yaml_key_is_refused_with_a_suggestion(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("redis:\n  ulr: redis://127.0.0.1:6379\n")
    refused(run("--config", str(cfg)), "unknown key redis.ulr; did you mean redis.url?")


def test_a_prefix_in_the_gateways_routing_namespace_is_refused():
    refused(run("--set", "destinations.broker-prefixes=/~user/"),
            "destination prefixes must not start with '/~' (the gateway's own routing of user destinations), got '/~user/'")


def test_route_outside_its_names_list_is_refused(tmp_path):
    cfg = tmp_path / "routes.yaml"
    cfg.write_text("routes:\n  names: []\n  greet:\n    destination: /app/greet\n    url: http://127.0.0.1:9/x\n")
    refused(run("--config", str(cfg)), "'greet' is not in routes.names")


@pytest.mark.parametrize("setting,message", [
    ("http.port=70000", "http.port must be 0…65535, got 70000"),
    ("http.port=eighty", "http.port must be an integer, got 'eighty'"),
    ("limits.max-pending-bytes=-1", "limits.max-pending-bytes must be ≥ 1, got -1"),
    ("http.tcp-nodelay=perhaps", "http.tcp-nodelay must be true or false, got 'perhaps'"),
    ("redis.url=127.0.0.1:6379", "redis.url '127.0.0.1:6379' is not a valid redis:// URL"),
    # Values too large to use crashed the process, at start-up or at the first connection.
    ("limits.max-frame-bytes=4294967296", "limits.max-frame-bytes must be ≤ 1073741824, got 4294967296"),
    ("server.shutdown-grace-ms=9223372036854775807", "server.shutdown-grace-ms must be ≤ 1099511627776, got 9223372036854775807"),
])
def test_bad_value_is_refused_naming_key_and_value(setting, message):
    refused(run("--set", setting), message)


def test_bad_value_in_yaml_is_refused(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("limits:\n  max-subscriptions: lots\n")
    refused(run("--config", str(cfg)), "limits.max-subscriptions must be an integer, got 'lots'")


def test_unknown_environment_variable_only_warns():
    gw = Gateway(name="config-checks-env",
                 env={"SWITCHBOARD_REDIS_ULR": "redis://127.0.0.1:6379", "SWITCHBOARD_STOMP_PATH": "/ws"})
    try:
        assert gw.health()["engine"] == "memory"
    finally:
        assert gw.stop() == 0
    log = gw.log_path.read_text()
    assert "unknown environment variable SWITCHBOARD_REDIS_ULR" in log
    assert "did you mean SWITCHBOARD_REDIS_URL?" in log
    assert "SWITCHBOARD_STOMP_PATH" not in log


def test_webhook_example_starts():
    gw = Gateway(["routes.greet.url=http://127.0.0.1:9/greet"], (REPO / "examples" / "webhook.yaml").read_text(),
                 name="config-checks-example")
    try:
        assert gw.health()["status"] == "ok"
    finally:
        assert gw.stop() == 0
