"""Where things are: the repository, the test artifacts folder and the binaries under test.

Binaries come from the environment, else from the debug build:
``SWITCHBOARD_BIN`` (``.build/debug/switchboard``), and beside it unless set on their own
``GREETING_SERVICE_BIN`` (``greeting-service``) and ``SWITCHBOARD_BENCH_BIN``
(``switchboard-bench``)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BINARY = os.environ.get("SWITCHBOARD_BIN", str(REPO / ".build" / "debug" / "switchboard"))
GREETING_BIN = os.environ.get("GREETING_SERVICE_BIN", str(Path(BINARY).parent / "greeting-service"))
BENCH_BIN = os.environ.get("SWITCHBOARD_BENCH_BIN", str(Path(BINARY).parent / "switchboard-bench"))

# What NIO prints when work is scheduled on an event loop that has shut down (a crash in later
# NIO versions): a gateway's log must never contain it.
NIO_LOOP_GONE = "Cannot schedule tasks on an EventLoop that has already shut down"
