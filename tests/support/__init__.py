"""Helpers shared by every pytest suite in tests/ (one copy each; no test module is a library).

pytest.ini at the repository root puts tests/ on the import path (``pythonpath = tests``), so
a test, in any folder, imports what it needs as::

    from support.gateway import Gateway, metric          # a switchboard process; /metrics
    from support.cluster import Cluster                   # redis-server + gateways + haproxy + replicas
    from support.stompclient import StompClient, encode_frame, ConnectionClosed
    from support.process import free_port, wait_until     # also popen_retrying, terminate
    from support.paths import REPO, ARTIFACTS, BINARY     # also GREETING_BIN, BENCH_BIN

Modules: ``paths`` (repo, artifacts, binaries from SWITCHBOARD_BIN / GREETING_SERVICE_BIN /
SWITCHBOARD_BENCH_BIN), ``process`` (ports, waiting, processes), ``gateway``, ``cluster``,
``redis``, ``webhook`` (a recording HTTP backend), ``stompclient`` (our STOMP client),
``stomppy`` (stomp.py with a recording listener), ``rawws`` (hand-built WebSocket frames),
``burst``, ``security`` (JWT keys/tokens, raw upgrades, expected refusals), ``robustness``.

Fixtures are not imported: tests/conftest.py holds the shared ones (``gateway_factory``,
``gateway``, ``client``, ``clients``, ``stomppy``, ``webhook``, ``hook``); a folder's
conftest.py holds only that folder's (``cluster_factory``/``shared_cluster`` in cluster,
``gw``/``keys`` in security, the small-frame ``gateway``/``watcher`` in robustness).
Test modules are imported in importlib mode, so one test module cannot import another:
put anything two tests share here. Wait for conditions with ``wait_until``, not sleeps.
"""
