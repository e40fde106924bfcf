"""Shared test configuration: Hypothesis profiles and the service gate.

Tests that need Redis or PostgreSQL call :func:`needs` when the service is missing: on a user's
machine that skips with the reason; with ``CACHEWARD_REQUIRE_SERVICES=1`` (set by ``.ci/run``)
it fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
from hypothesis import HealthCheck, settings

# The everyday profile is derandomized: the same examples every run, so the suite is
# deterministic and every "can fail" sibling that finds its counterexample once finds it always.
# The thorough profile keeps exploring new examples.
settings.register_profile(
    "fast",
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("CACHEWARD_HYPOTHESIS_PROFILE", "fast"))

REQUIRE_SERVICES = os.environ.get("CACHEWARD_REQUIRE_SERVICES", "") not in ("", "0")


def needs(service: str, reason: str) -> NoReturn:
    """Skip (or, under ``CACHEWARD_REQUIRE_SERVICES=1``, fail) because ``service`` is missing."""
    message = f"needs {service}: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (CACHEWARD_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``), checked by PING."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis
    except ImportError:
        needs("redis", "the redis package is not installed (pip install -e '.[test]')")
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        needs("redis", f"no Redis answers at {url} ({exc}); set REDIS_URL")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def database_url() -> str:
    """The PostgreSQL URL from ``DATABASE_URL`` (checked by connecting)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        needs(
            "postgres", "DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    try:
        import psycopg
    except ImportError:
        needs("postgres", "the psycopg package is not installed (pip install -e '.[test]')")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        needs("postgres", f"cannot connect to {url} ({exc})")
    return url
