"""The web console, driven in real headless Chromium (Selenium), against a real gateway.

The module starts its own `switchboard` (free port; binary from SWITCHBOARD_BIN or
.build/debug/switchboard) with a webhook route for /app/greet answered by a small Python
HTTP server, then uses the console like a person would: connect, subscribe, receive an API
publish, run the seed tests, SEND to /app/greet, provoke an ERROR, watch it reconnect and
re-subscribe, filter the log. Screenshot: test-artifacts/console.png.

Also runs the JavaScript unit tests of the STOMP client (`node --test tests/console/`).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from support.gateway import Gateway
from support.paths import ARTIFACTS, REPO
from support.process import free_port, popen_retrying, terminate, wait_until
from support.redis import redis_cli, redis_server_args

# ---------------------------------------------------------------------------------------
# JavaScript unit tests


def test_js_unit_tests():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    proc = subprocess.run([node, "--test", "tests/console/"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout


# ---------------------------------------------------------------------------------------
# Fixtures: webhook backend, gateway, browser


def greet(req: dict) -> dict:
    """The webhook backend's answer: a greeting for the SEND's body, on /topic/greetings."""
    return {"replies": [{"destination": "/topic/greetings", "body": f"Hello, {req['json'].get('body', '')}!"}]}


@pytest.fixture(scope="module")
def gateway(webhook):
    webhook.reply = greet
    gw = Gateway(yaml=(
        "routes:\n"
        "  names: [greet]\n"
        "  greet:\n"
        "    destination: /app/greet\n"
        "    type: webhook\n"
        f"    url: {webhook.url}\n"
        "    timeout-ms: 3000\n"), name="test_console_browser", log_level="info")
    yield gw.base
    gw.stop()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("chromium and chromium-driver are not installed")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------
# Helpers


def health(base):
    import requests
    return requests.get(base + "/health", timeout=2).json()


def log_entries(driver, command=None):
    """[(command, dir, text)] of the log entries currently shown."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#log .entry')]
             .filter(e => !arguments[0] || e.dataset.command === arguments[0])
             .map(e => [e.dataset.command, e.dataset.dir, e.textContent]);""", command)


def result_text(driver, element_id):
    return driver.find_element("id", element_id).text


def fill(driver, element_id, value):
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(value)


def status(driver):
    return driver.execute_script("const s = document.getElementById('status'); return [s.dataset.state, s.innerText];")


# ---------------------------------------------------------------------------------------
# The browser test


def test_console_end_to_end(browser, gateway, webhook):
    import requests

    d = browser
    port = gateway.rsplit(":", 1)[1]
    d.get(gateway + "/console")  # redirects to /console/index.html
    assert d.current_url.endswith("/console/index.html")
    wait_until(lambda: d.find_element("id", "url").get_attribute("value") == f"ws://127.0.0.1:{port}/stomp",
               what="default URL")
    # Stats from /health, refreshed every 2 s.
    wait_until(lambda: result_text(d, "stat-engine") == "memory", what="engine in stats")
    assert result_text(d, "stat-instance") == health(gateway)["instance"]
    # Without Redis the Redis seed test is unavailable and says why.
    assert not d.find_element("id", "qt-redis").is_enabled()
    assert "needs Redis" in result_text(d, "qt-redis-result")

    # Connect, with a token (sent as passcode and Authorization: Bearer, masked in the log).
    fill(d, "token", "s3cret-token")
    d.find_element("id", "connect-btn").click()
    state, text = wait_until(lambda: status(d)[0] == "connected" and status(d), what="connected")
    assert "STOMP 1.2" in text and "heart-beat" in text, text
    connect_frame = wait_until(lambda: log_entries(d, "CONNECT"), what="CONNECT in log")[0][2]
    assert "Authorization:Bearer •••" in connect_frame and "accept-version:1.0,1.1,1.2" in connect_frame, connect_frame
    assert "s3cret" not in d.find_element("id", "log").text
    assert d.find_element("id", "connect-btn").text == "Disconnect"
    wait_until(lambda: result_text(d, "stat-sessions") == "1", what="1 session in stats")

    # Subscribe to /topic/toast (the default destination) and receive an API publish.
    d.find_element("id", "sub-btn").click()
    wait_until(lambda: d.find_elements("css selector", '#sub-list li[data-destination="/topic/toast"]'), what="subscription listed")
    wait_until(lambda: health(gateway)["subscriptions"] == 1, what="server-side subscription")
    r = requests.post(gateway + "/api/notification", json={"topic": "/topic/toast", "message": "hello from pytest"}, timeout=5)
    assert r.status_code == 200, r.text
    msg = wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "hello from pytest" in e[2]], what="MESSAGE in log")
    assert msg[0][1] == "in" and "/topic/toast" in msg[0][2]
    wait_until(lambda: d.find_element("css selector", '#sub-list li[data-destination="/topic/toast"] .count').text == "1",
               what="message count on the subscription")

    # Publish through the console's API form (HTTP API).
    fill(d, "api-message", "from the API form")
    d.find_element("id", "api-btn").click()
    wait_until(lambda: "published" in result_text(d, "api-result"), what="API publish result")
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "from the API form" in e[2]], what="API-form MESSAGE")
    # A bad API request shows the server's error and field.
    fill(d, "api-topic", "")
    d.find_element("id", "api-btn").click()
    wait_until(lambda: "HTTP 400" in result_text(d, "api-result") and "topic" in result_text(d, "api-result"),
               what="API 400 shown")
    fill(d, "api-topic", "/topic/toast")

    # Seed test 1: API to topic.
    d.find_element("id", "qt-api").click()
    wait_until(lambda: result_text(d, "qt-api-result").startswith("✓"), what="API to topic seed test")

    # Seed test 3: SEND to /app/greet (webhook) with a receipt, greeting on /topic/greetings.
    d.find_element("id", "qt-app").click()
    wait_until(lambda: result_text(d, "qt-app-result").startswith("✓"), what="SEND to /app seed test")
    assert "Hello, Console!" in result_text(d, "qt-app-result")
    assert webhook.bodies and webhook.bodies[-1]["destination"] == "/app/greet"
    assert webhook.bodies[-1]["body"] == "Console"
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "Hello, Console!" in e[2] and "/topic/greetings" in e[2]],
               what="greeting in log")
    assert [e for e in log_entries(d, "RECEIPT")]
    wait_until(lambda: d.find_elements("css selector", '#sub-list li[data-destination="/topic/greetings"]'), what="greetings sub")

    # The SEND form, with a custom header and a receipt.
    fill(d, "send-dest", "/app/greet")
    fill(d, "send-body", "Form")
    d.find_element("id", "send-add-header").click()
    rows = d.find_elements("css selector", "#send-headers .kv")
    rows[-1].find_element("css selector", ".k").send_keys("x-trace")
    rows[-1].find_element("css selector", ".v").send_keys("t:1")
    d.find_element("id", "send-btn").click()
    wait_until(lambda: result_text(d, "send-result").startswith("RECEIPT"), what="SEND receipt")
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "Hello, Form!" in e[2]], what="greeting for the form SEND")
    assert webhook.bodies[-1]["headers"].get("x-trace") == "t:1"
    sent = [e for e in log_entries(d, "SEND") if "Form" in e[2]]
    assert sent and sent[-1][1] == "out" and "x-trace:" in sent[-1][2]

    # Bad input: SEND to /queue/nope gets an ERROR, rendered red with its message header.
    fill(d, "send-dest", "/queue/nope")
    fill(d, "send-body", "nope")
    d.find_element("id", "send-btn").click()
    err = wait_until(lambda: log_entries(d, "ERROR"), what="ERROR in log")
    assert "destination /queue/nope is not allowed" in err[-1][2], err
    assert "message: destination /queue/nope is not allowed" in err[-1][2]
    color = d.execute_script(
        "return getComputedStyle(document.querySelector('#log .entry.cmd-ERROR')).backgroundColor")
    assert color not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)"), color
    banner = d.find_element("id", "error-banner")
    assert banner.is_displayed() and "/queue/nope is not allowed" in banner.text
    wait_until(lambda: "not allowed" in result_text(d, "send-result"), what="send result shows the error")

    # The server closes the connection after an ERROR; the client reconnects and re-subscribes.
    wait_until(lambda: [e for e in log_entries(d, "INFO") if "reconnecting" in e[2]], what="reconnect notice")
    wait_until(lambda: status(d)[0] == "connected", timeout=10, what="reconnected")
    wait_until(lambda: health(gateway)["subscriptions"] == 2, what="re-subscribed after reconnect")
    wait_until(lambda: len(log_entries(d, "CONNECTED")) >= 2, what="second CONNECTED in log")
    requests.post(gateway + "/api/notification", json={"topic": "/topic/toast", "message": "after the reconnect"}, timeout=5)
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "after the reconnect" in e[2]], what="MESSAGE after reconnect")

    # Rates from /metrics counters (delivered messages, frames in/out).
    def delivered():
        t = d.find_element("id", "stat-messagesDelivered").text
        return "/s" in t and int(t.split("Σ")[1].strip()) >= 6 and t
    wait_until(delivered, timeout=6, what="delivered counter with a rate")

    # Screenshot of the whole thing (before filtering), for the docs.
    ARTIFACTS.mkdir(exist_ok=True)
    d.find_element("id", "send-dest").clear()
    d.find_element("id", "send-dest").send_keys("/topic/toast")
    d.execute_script("document.querySelector('.side').scrollTop = 0; document.activeElement.blur();")
    wait_until(lambda: result_text(d, "stat-sessions") == "1" and result_text(d, "stat-subscriptions") == "2",
               timeout=5, what="stats after the reconnect")
    assert d.save_screenshot(str(ARTIFACTS / "console.png"))

    # Filters: by text and by command.
    fill(d, "log-filter", "hello from pytest")
    wait_until(lambda: len(log_entries(d)) >= 1 and all("hello from pytest" in e[2].lower() or "hello from pytest" in e[2]
                                                       for e in log_entries(d)), what="text filter")
    fill(d, "log-filter", "")
    from selenium.webdriver.support.ui import Select
    Select(d.find_element("id", "log-command")).select_by_visible_text("ERROR")
    wait_until(lambda: log_entries(d) and all(e[0] == "ERROR" for e in log_entries(d)), what="command filter")
    Select(d.find_element("id", "log-command")).select_by_value("")
    wait_until(lambda: len(log_entries(d)) > 10, what="filters cleared")

    # Unsubscribe from the list.
    d.find_element("css selector", '#sub-list li[data-destination="/topic/toast"] .unsub').click()
    wait_until(lambda: health(gateway)["subscriptions"] == 1, what="unsubscribed")
    assert not d.find_elements("css selector", '#sub-list li[data-destination="/topic/toast"]')

    # Disconnect.
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "disconnected", what="disconnected")
    wait_until(lambda: health(gateway)["sessions"] == 0, what="session closed on the server")
    wait_until(lambda: [e for e in log_entries(d, "DISCONNECT") if e[1] == "out"], what="DISCONNECT in log")

    # No JavaScript errors on the page (the deliberate HTTP 400 above is a 'network' entry).
    severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE" and e.get("source") != "network"]
    assert not severe, severe


# ---------------------------------------------------------------------------------------
# Redis engine: the "Redis Pub/Sub to topic" seed test


@pytest.fixture(scope="module")
def redis_gateway():
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    rlog = open(ARTIFACTS / "test_console_browser-redis.log", "wb")
    redis = popen_retrying(redis_server_args(port, tempfile.mkdtemp(prefix="sb-console-redis-")), stdout=rlog,
                           stderr=subprocess.STDOUT)
    wait_until(lambda: redis.poll() is not None or redis_cli(port, "PING") == "PONG", what="redis-server")
    assert redis.poll() is None, "redis-server did not start"
    gw = Gateway([f"redis.url=redis://127.0.0.1:{port}"], yaml=(REPO / "examples" / "seed-streams.yaml").read_text(),
                 name="test_console_browser-redis-gw", log_level="info")
    yield gw.base, port
    gw.stop()
    terminate(redis, 5)
    rlog.close()


def redis_publish(port: int, channel: str, message: str):
    """PUBLISH over a raw RESP connection (no client library needed)."""
    parts = [b"PUBLISH", channel.encode(), message.encode()]
    cmd = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(cmd)
        assert s.recv(64).startswith(b":")


def test_console_redis_engine(browser, redis_gateway):
    import requests

    base, redis_port = redis_gateway
    d = browser
    d.get(base + "/console/index.html")
    wait_until(lambda: result_text(d, "stat-engine") == "redis", what="redis engine in stats")
    wait_until(lambda: d.find_element("id", "stat-redis-box").is_displayed(), what="redis connection stats")
    wait_until(lambda: d.find_element("id", "qt-redis").is_enabled(), what="Redis seed button enabled")
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "connected", what="connected")

    # The seed's Redis test done by a backend: PUBLISH GREETING_CHANNEL_INBOUND reaches /topic/greetings.
    fill(d, "sub-dest", "/topic/greetings")
    d.find_element("id", "sub-btn").click()
    wait_until(lambda: requests.get(base + "/health", timeout=2).json()["subscriptions"] >= 1, what="subscribed")
    wait_until(lambda: redis_cli(redis_port, "PUBSUB", "NUMSUB", "GREETING_CHANNEL_INBOUND").splitlines()[1] != "0",
               what="the gateway's Redis SUBSCRIBE to GREETING_CHANNEL_INBOUND")
    redis_publish(redis_port, "GREETING_CHANNEL_INBOUND", '"Test Message from Backend PubSub"')
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "Test Message from Backend PubSub" in e[2]],
               what="Redis-published MESSAGE in the log")

    # The one-click button goes through POST /api/console/redis-publish when the gateway has
    # it, and otherwise says plainly that the endpoint is missing.
    has_endpoint = requests.post(base + "/api/console/redis-publish", json={"channel": "NOBODY", "message": "x"},
                                 timeout=5).status_code not in (404, 405)
    d.find_element("id", "qt-redis").click()
    if has_endpoint:
        wait_until(lambda: result_text(d, "qt-redis-result").startswith("✓"), what="Redis seed test passes")
    else:
        wait_until(lambda: "no POST /api/console/redis-publish" in result_text(d, "qt-redis-result"),
                   what="graceful 'endpoint missing' message")
    d.save_screenshot(str(ARTIFACTS / "console-redis.png"))


# ---------------------------------------------------------------------------------------
# Heart-beats both ways, and the log cap


@pytest.fixture(scope="module")
def fast_heartbeat_gateway():
    gw = Gateway(["stomp.heartbeat.send-ms=400", "stomp.heartbeat.receive-ms=400"], name="test_console_browser-hb",
                 log_level="info")
    yield gw.base
    gw.stop()


def test_console_heartbeats_and_log_cap(browser, fast_heartbeat_gateway):
    import requests

    base = fast_heartbeat_gateway
    d = browser
    d.get(base + "/console/index.html")
    wait_until(lambda: d.find_element("id", "url").get_attribute("value").endswith("/stomp"), what="page ready")
    # 1 s, not less: a busy machine delays a headless browser's timers by hundreds of ms.
    fill(d, "heartbeat", "1000,1000")
    d.find_element("id", "log-heartbeats").click()
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "connected", what="connected")
    assert "↑1s ↓1s" in status(d)[1], status(d)
    time.sleep(4.5)  # > tolerance × interval on both sides: only heart-beats keep the session alive
    assert status(d)[0] == "connected"
    assert len(log_entries(d, "CONNECTED")) == 1, "the session must not have been dropped"
    hb = log_entries(d, "HB")
    assert any(e[1] == "in" for e in hb) and any(e[1] == "out" for e in hb), hb[:5]
    assert requests.get(base + "/health", timeout=2).json()["sessions"] == 1

    # The log keeps the last 1000 entries. (Reconnect with slow heart-beats first: a burst of
    # renders must not be mistaken for a dead client by the 400 ms server-side check.)
    d.find_element("id", "log-heartbeats").click()  # stop logging heart-beats
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "disconnected", what="disconnected")
    fill(d, "heartbeat", "10000,10000")
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "connected", what="connected again")
    d.find_element("id", "sub-btn").click()
    wait_until(lambda: requests.get(base + "/health", timeout=2).json()["subscriptions"] == 1, what="subscribed")
    with requests.Session() as s:
        for i in range(1050):
            s.post(base + "/api/notification", json={"topic": "/topic/toast", "message": f"bulk {i}"}, timeout=5)
    last = "return [...document.querySelectorAll('#log .entry[data-command=MESSAGE] pre.body')].map(p => p.textContent)"
    bodies = wait_until(lambda: (b := d.execute_script(last)) and b[-1] == "bulk 1049" and b, timeout=10,
                        what="last bulk message")
    assert d.execute_script("return document.querySelectorAll('#log .entry').length") == 1000
    assert d.execute_script("return window.switchboardConsole.entries.length") == 1000
    assert "bulk 0" not in bodies and "bulk 1049" in bodies
    assert d.find_element("id", "log-count").text == "1000"
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "disconnected", what="disconnected")


def test_console_resumes_its_subscriptions_after_a_reconnect(browser, gateway):
    """Disconnect, a message is published meanwhile, Connect: the console's client resumes
    from the last x-position it saw and shows the missed message; the log says nothing was
    lost."""
    import requests

    d = browser
    d.get(gateway + "/console")
    wait_until(lambda: d.find_element("id", "connect-btn").text == "Connect", what="console loaded")
    d.find_element("id", "connect-btn").click()
    wait_until(lambda: status(d)[0] == "connected", what="connected")
    fill(d, "sub-dest", "/topic/resume")
    d.find_element("id", "sub-btn").click()
    count = '#sub-list li[data-destination="/topic/resume"] .count'
    wait_until(lambda: d.find_elements("css selector", count), what="subscription listed")
    requests.post(gateway + "/api/notification", json={"topic": "/topic/resume", "message": "before"}, timeout=5)
    wait_until(lambda: d.find_element("css selector", count).text == "1", what="first message")
    d.find_element("id", "connect-btn").click()  # Disconnect
    wait_until(lambda: status(d)[0] == "disconnected", what="disconnected")
    r = requests.post(gateway + "/api/notification", json={"topic": "/topic/resume", "message": "while away"}, timeout=5)
    assert r.status_code == 200
    d.find_element("id", "connect-btn").click()  # Connect again
    wait_until(lambda: [e for e in log_entries(d, "MESSAGE") if "while away" in e[2]], what="the missed message")
    wait_until(lambda: d.find_element("css selector", count).text == "2", what="both messages counted")
    subscribe = [e for e in log_entries(d, "SUBSCRIBE") if "/topic/resume" in e[2]]
    assert any("x-resume-from" in e[2] for e in subscribe), subscribe
    wait_until(lambda: "/topic/resume: resumed after" in d.find_element("id", "log").text
               and "nothing missed" in d.find_element("id", "log").text, what="resume reported")
