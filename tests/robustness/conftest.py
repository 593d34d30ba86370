"""Fixtures and hooks of tests/robustness; the helpers live in robustnesslib.py, which tests import directly
(a module named conftest is ambiguous when several folders are collected together)."""
from robustnesslib import *  # noqa: F401,F403
