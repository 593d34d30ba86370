"""Fixtures of tests/security (helpers: support.security)."""
import tempfile
from pathlib import Path

import pytest

from support.security import Keys


@pytest.fixture(scope="module")
def gw(gateway_factory):
    """gw(*sets, yaml=None) -> a started Gateway (stopped, exit 0 asserted, at the end of the module)."""
    return gateway_factory


@pytest.fixture(scope="session")
def keys():
    return Keys(Path(tempfile.mkdtemp(prefix="sb-security-keys-")))
