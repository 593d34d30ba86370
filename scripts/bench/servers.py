"""Start and stop the servers under test, each in its own temp dir on free loopback ports.

Switchboard (release binary), nginx + nchan (memory or Redis mode), RabbitMQ Web-STOMP, Redis.
Every server object exposes: .port (WebSocket/HTTP), .pids() (for RSS), .stop().
`ensure_packages()` installs the Debian packages the first time (root, apt-get).
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWITCHBOARD_BIN = os.environ.get("SWITCHBOARD_BIN", os.path.join(ROOT, ".build/release/switchboard"))
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
APT_PACKAGES = ["nginx-light", "libnginx-mod-nchan", "rabbitmq-server", "redis-server"]


def ensure_packages(servers=("nchan", "rabbitmq")):
    """Installs what the chosen servers (and Redis) need, if missing."""
    missing = []
    if "nchan" in servers and (not shutil.which("nginx") or not os.path.exists(NCHAN_MODULE)):
        missing += ["nginx-light", "libnginx-mod-nchan"]
    if "rabbitmq" in servers and not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        missing.append("rabbitmq-server")
    if not shutil.which("redis-server"):
        missing.append("redis-server")
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + missing, check=True, env=env)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def cpu_seconds(pids):
    """User + system CPU time of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for c in f.read().split():
                out.append(int(c))
                out += children(int(c))
    except OSError:
        pass
    return out


def pinned(argv, role):
    """`argv` under `taskset -c <cpus>` when BENCH_SERVER_CPUS / BENCH_CLIENT_CPUS is set
    (run-all --pin): servers on one set of cores, generators on another. taskset execs the
    program, so the pid stays the program's."""
    cpus = os.environ.get("BENCH_SERVER_CPUS" if role == "server" else "BENCH_CLIENT_CPUS")
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


class Proc:
    def __init__(self, argv, log, env=None, cwd=None):
        argv = pinned(argv, "server")
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


class Redis:
    """One redis-server; `replica`: and a replica of it (its link up before this returns)."""
    def __init__(self, replica=False):
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.proc = Proc(self.argv(self.port, self.dir), os.path.join(self.dir, "redis.log"))
        wait_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}"
        self.replica = None
        if replica:
            rdir = tempfile.mkdtemp(prefix="bench-redis-replica-")
            rport = free_port()
            self.replica = Proc(self.argv(rport, rdir) + ["--replicaof", "127.0.0.1", str(self.port)],
                                os.path.join(rdir, "redis.log"))
            wait_port(rport)
            deadline = time.time() + 30
            while "master_link_status:up" not in subprocess.run(["redis-cli", "-p", str(rport), "INFO", "replication"],
                                                                capture_output=True, text=True).stdout:
                if time.time() > deadline:
                    raise RuntimeError("the bench Redis replica did not link up")
                time.sleep(0.05)

    @staticmethod
    def argv(port, directory):
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", directory, "--maxclients", "10000"]

    def pids(self):
        return [self.proc.p.pid] + ([self.replica.p.pid] if self.replica else [])

    def stop(self):
        if self.replica:
            self.replica.stop()
        self.proc.stop()


class Switchboard:
    name = "switchboard"
    mode = "stomp"
    ws_path = "/stomp"
    topic_prefix = "/topic/bench."
    publish_url = "/api/notification"
    publish_format = "json"
    login = None

    binary = SWITCHBOARD_BIN

    def __init__(self, redis_url=None, config=None, extra=()):
        if not os.path.exists(self.binary):
            raise RuntimeError(f"build it first: cd {ROOT} && swift build -c release --product switchboard ({self.binary})")
        self.dir = tempfile.mkdtemp(prefix="bench-sb-")
        self.port = free_port()
        argv = [self.binary, "--host", "127.0.0.1", "--port", str(self.port),
                "--set", "stomp.heartbeat.send-ms=0", "--set", "stomp.heartbeat.receive-ms=0",
                "--set", "limits.max-pending-bytes=16777216", "--set", "server.threads=2",
                "--set", "http.backlog=8192", "--log-level", "warning"]
        if redis_url:
            argv += ["--set", f"redis.url={redis_url}"]
        if config:
            argv += ["--config", config]
        argv += list(extra)
        self.proc = Proc(argv, os.path.join(self.dir, "switchboard.log"))
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    break
            except OSError:
                if time.time() > deadline or self.proc.p.poll() is not None:
                    raise RuntimeError("switchboard did not start: " + open(os.path.join(self.dir, "switchboard.log")).read()[-2000:])
                time.sleep(0.1)

    def pids(self):
        return [self.proc.p.pid]

    def stop(self):
        self.proc.stop(signal.SIGKILL)

    def busy_state(self):
        """(loops in busy mode now, switches so far) from /metrics, or None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        values = {}
        for line in text.splitlines():
            if line.startswith(("switchboard_event_loops_busy ", "switchboard_busy_mode_switches_total ")):
                name, value = line.split()
                values[name] = int(float(value))
        return (values.get("switchboard_event_loops_busy"), values.get("switchboard_busy_mode_switches_total"))


NGINX_CONF = """
load_module {module};
worker_processes 2;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 19000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  nchan_max_reserved_memory 512M;
  {redis_http}
  server {{
    listen 127.0.0.1:{port} backlog=8192;
    location = /ok {{ return 204; }}
    location ~ ^/pub/(.+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 1;
      nchan_message_timeout 30s;
      {redis_loc}
    }}
    location ~ ^/sub/(.+)$ {{
      nchan_subscriber websocket;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
      {redis_loc}
    }}
  }}
}}
"""


class Nchan:
    name = "nchan"
    mode = "raw-ws"
    ws_path = "/sub/{topic}"
    topic_prefix = "bench."
    publish_url = "/pub/{topic}"
    publish_format = "raw"
    login = None

    #: Environment of the nginx process (``NchanNoDelay`` preloads a shim).
    env = None

    def __init__(self, redis_url=None):
        self.dir = tempfile.mkdtemp(prefix="bench-nchan-")
        self.port = free_port()
        redis_http = f'upstream bench_redis {{ nchan_redis_server "{redis_url}"; }}' if redis_url else ""
        redis_loc = "nchan_redis_pass bench_redis;" if redis_url else ""
        conf = NGINX_CONF.format(module=NCHAN_MODULE, dir=self.dir, port=self.port,
                                 redis_http=redis_http, redis_loc=redis_loc)
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = Proc(["nginx", "-p", self.dir, "-c", path], os.path.join(self.dir, "nginx.out"), env=self.env)
        wait_port(self.port)
        time.sleep(0.5)

    def pids(self):
        return [self.proc.p.pid] + children(self.proc.p.pid)

    def stop(self):
        self.proc.stop(signal.SIGQUIT)


class NchanNoDelay(Nchan):
    """nginx+nchan with TCP_NODELAY on every accepted socket (an LD_PRELOAD shim,
    ``nodelay_shim.c``): nginx leaves Nagle on for nchan's WebSockets, so by default the kernel
    coalesces its small writes while an ACK is outstanding. For the server CPU per delivery
    with both servers writing each message at once."""
    name = "nchan-nodelay"

    def __init__(self, redis_url=None):
        shim = os.path.join(tempfile.gettempdir(), "switchboard-bench-nodelay-shim.so")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nodelay_shim.c")
        if not os.path.exists(shim) or os.path.getmtime(shim) < os.path.getmtime(source):
            subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", shim, source, "-ldl"], check=True)
        self.env = dict(os.environ, LD_PRELOAD=shim)
        super().__init__(redis_url=redis_url)


RABBIT_CONF = """
listeners.tcp.default = {amqp}
web_stomp.tcp.port = {port}
web_stomp.tcp.backlog = 4096
web_stomp.max_connections = infinity
web_stomp.num_acceptors.tcp = 10

loopback_users = none
log.console = true
log.console.level = warning
log.file = false
"""


class RabbitMQ:
    name = "rabbitmq"
    mode = "stomp"
    ws_path = "/ws"
    topic_prefix = "/topic/bench."
    publish_url = None       # no HTTP publish API: publish through STOMP SEND
    publish_format = None
    login = ("guest", "guest", "/")

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-rabbit-")
        self.port = free_port()
        amqp, dist = free_port(), free_port()
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(RABBIT_CONF.format(amqp=amqp, port=self.port, mgmt=free_port()))
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_web_stomp].\n")
        node = f"bench{self.port}@localhost"
        self.env = dict(os.environ,
                        RABBITMQ_NODENAME=node,
                        RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_DIST_PORT=str(dist),
                        RABBITMQ_CONF_ENV_FILE=os.path.join(self.dir, "rabbitmq-env.conf"),
                        HOME=self.dir)
        open(os.path.join(self.dir, "rabbitmq-env.conf"), "w").close()
        self.node = node
        self.proc = Proc(["/usr/lib/rabbitmq/bin/rabbitmq-server"], os.path.join(self.dir, "rabbit.out"), env=self.env,
                         cwd=self.dir)
        wait_port(self.port, timeout=120)
        time.sleep(1.0)

    def pids(self):
        # the Erlang VM (beam.smp) is a descendant of the script; count all of them
        ps = [self.proc.p.pid] + children(self.proc.p.pid)
        return [p for p in ps if _comm(p) in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")] or ps

    def stop(self):
        self.proc.stop(signal.SIGTERM, timeout=30)


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class SwitchboardNagle(Switchboard):
    """Switchboard with `http.tcp-nodelay=false`: the kernel's Nagle algorithm holds small
    writes while earlier data is unacknowledged, as nginx does for nchan's WebSockets (it sets
    TCP_NODELAY only on HTTP keep-alive connections). For scenarios (a)-(c) and (f)."""
    name = "switchboard-nagle"

    def __init__(self, redis_url=None, config=None, extra=()):
        super().__init__(redis_url=redis_url, config=config, extra=("--set", "http.tcp-nodelay=false", *extra))


class SwitchboardNoDelay(Switchboard):
    """Switchboard with `TCP_NODELAY` and the usual write coalescing always
    (`server.busy-percent=0`, no busy mode): the default before busy mode existed. For scenarios (a)-(c) and (f)."""
    name = "switchboard-nodelay"

    def __init__(self, redis_url=None, config=None, extra=()):
        super().__init__(redis_url=redis_url, config=config, extra=("--set", "server.busy-percent=0", *extra))


class SwitchboardNoHistory(Switchboard):
    """Switchboard with `history.enabled=false`: no per-destination history (the embedded
    broker's recovery window), to separate its cost from the rest in before/after runs."""
    name = "switchboard-nohistory"

    def __init__(self, redis_url=None, config=None, extra=()):
        super().__init__(redis_url=redis_url, config=config, extra=("--set", "history.enabled=false", *extra))


class SwitchboardReplica(Switchboard):
    """Switchboard whose Redis has a replica (scenario (e)): the baseline for
    `switchboard-wait-replica`."""
    name = "switchboard-replica"
    redis_replica = True


class SwitchboardWaitReplica(Switchboard):
    """Switchboard with `redis.wait-replicas=1` against a Redis with a replica (scenario (e)):
    a stream route's RECEIPT only once the replica acknowledged the entry."""
    name = "switchboard-wait-replica"
    redis_replica = True

    def __init__(self, redis_url=None, config=None, extra=()):
        super().__init__(redis_url=redis_url, config=config, extra=("--set", "redis.wait-replicas=1", *extra))


class SwitchboardBaseline(Switchboard):
    """Another build of Switchboard (SWITCHBOARD_BASELINE_BIN, e.g. the commit before a
    refactoring), for before/after ratios in one run."""
    name = "switchboard-baseline"
    binary = os.environ.get("SWITCHBOARD_BASELINE_BIN", "/nonexistent/switchboard-baseline")


SERVERS = {"switchboard": Switchboard, "switchboard-baseline": SwitchboardBaseline, "switchboard-nagle": SwitchboardNagle, "switchboard-nodelay": SwitchboardNoDelay,
           "switchboard-nohistory": SwitchboardNoHistory, "switchboard-replica": SwitchboardReplica,
           "switchboard-wait-replica": SwitchboardWaitReplica,
           "nchan": Nchan, "nchan-nodelay": NchanNoDelay, "rabbitmq": RabbitMQ}
