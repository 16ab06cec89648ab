"""Shared pytest setup for the pygev test suite.

Hypothesis runs with a bounded, deterministic profile (no example database on disk, no
per-example deadline: CI machines are noisy), so property tests stay fast and repeatable.
Set PYGEV_HYPOTHESIS_PROFILE=explore for a longer randomised run when hunting bugs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "pygev",
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("explore", parent=settings.get_profile("pygev"), max_examples=2000,
                           derandomize=False)
settings.load_profile(os.environ.get("PYGEV_HYPOTHESIS_PROFILE", "pygev"))


def pytest_report_header() -> str:
    """Which backend `Server(backend=None)` uses in this run (PYGEV_BACKEND=io_uring selects it)."""
    from reactor.backends import resolve
    why = ""
    if os.environ.get("PYGEV_BACKEND") == "io_uring":
        from reactor.backends import uring_unavailable
        why = uring_unavailable()
    return f"pygev backend: {resolve(None)}" + (f" (io_uring unavailable: {why})" if why else "")


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fail the test if the reactor logs anything at ERROR (a bug, not bad input); the records
    from WARNING up stay readable through the fixture."""
    caplog.set_level(logging.WARNING, logger="reactor")
    yield caplog
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and r.name.startswith("reactor")]
