"""Fixtures and hooks of tests/security; the helpers live in securitylib.py, which tests import directly
(a module named conftest is ambiguous when several folders are collected together)."""
from securitylib import *  # noqa: F401,F403
