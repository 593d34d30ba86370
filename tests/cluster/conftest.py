"""Fixtures and hooks of tests/cluster; the helpers live in clusterlib.py, which tests import directly
(a module named conftest is ambiguous when several folders are collected together)."""
from clusterlib import *  # noqa: F401,F403
