"""Misconfigurations that used to be accepted and then silently disable a layer or a bucket
(issue 15 item 15, issue 17 item 7) fail at construction or decoration, naming the argument."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import cacheward as cw
from cacheward._checks import MAX_LIFETIME, MAX_SOCKET_TIMEOUT, check_url


def sync_client(**kwargs: Any) -> redis.Redis:
    options: dict[str, Any] = {"socket_timeout": 0.1, "socket_connect_timeout": 0.1}
    options["retry"] = Retry(NoBackoff(), 0)
    options.update(kwargs)
    return redis.Redis(host="127.0.0.1", port=6379, **options)


def async_client(**kwargs: Any) -> redis.asyncio.Redis:
    options: dict[str, Any] = {"socket_timeout": 0.1, "socket_connect_timeout": 0.1}
    options["retry"] = AsyncRetry(NoBackoff(), 0)
    options.update(kwargs)
    return redis.asyncio.Redis(host="127.0.0.1", port=6379, **options)


def test_an_asyncio_client_on_a_def_function_is_refused_at_decoration() -> None:
    layer = cw.RedisLayer(async_client())
    with pytest.raises(cw.ConfigurationError, match=r"layers\[1\].*asyncio.*from_url"):

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer])
        def load(key: str) -> str:
            return key


def test_a_sync_client_on_an_async_def_function_is_refused_at_decoration() -> None:
    layer = cw.RedisLayer(sync_client())
    with pytest.raises(cw.ConfigurationError, match=r"layers\[0\].*synchronous.*async def"):

        @cw.cached(ttl=60, layers=[layer])
        async def load(key: str) -> str:
            return key


def test_a_from_url_layer_serves_both_colours() -> None:
    layer = cw.RedisLayer.from_url("redis://127.0.0.1:6379/0")

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer])
    def load(key: str) -> str:
        return key

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer])
    async def aload(key: str) -> str:
        return key

    assert callable(load)
    assert callable(aload)


def test_an_async_shared_bucket_in_a_sync_guard_is_refused() -> None:
    bucket = cw.RedisTokenBucket(async_client(), name="db", rate=10)
    with pytest.raises(cw.ConfigurationError, match=r"limiter.*asyncio.*plain def"):

        @cw.guard(ttl=60, limiter=bucket)
        def load(key: str) -> str:
            return key

    with pytest.raises(cw.ConfigurationError, match=r"limiter"):

        @cw.rate_limit(bucket)
        def fetch(key: str) -> str:
            return key


def test_a_sync_shared_bucket_in_an_async_guard_is_refused() -> None:
    bucket = cw.RedisTokenBucket(sync_client(), name="db", rate=10)
    with pytest.raises(cw.ConfigurationError, match=r"limiter.*synchronous.*async def"):

        @cw.guard(ttl=60, limiter=bucket)
        async def load(key: str) -> str:
            return key

    @cw.guard(ttl=60, limiter=bucket)  # the right colour is accepted
    def ok(key: str) -> str:
        return key

    assert callable(ok)


@pytest.mark.parametrize("seconds", [0, 0.0, timedelta(0)])
def test_a_zero_socket_timeout_is_refused(seconds: object) -> None:
    with pytest.raises(cw.ConfigurationError, match="timeout"):
        cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", timeout=seconds)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="connect_timeout"):
        cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", connect_timeout=seconds)  # type: ignore[arg-type]


def test_a_user_client_with_socket_timeout_zero_is_refused() -> None:
    # redis-py reads 0 as a non-blocking socket: every command would fail, every read a miss.
    with pytest.raises(cw.ConfigurationError, match="socket_timeout"):
        cw.RedisLayer(sync_client(socket_timeout=0))
    with pytest.raises(cw.ConfigurationError, match="socket_connect_timeout"):
        cw.RedisLayer(async_client(socket_connect_timeout=0))
    with pytest.raises(cw.ConfigurationError, match="socket_timeout"):
        cw.RedisTokenBucket(sync_client(socket_timeout=0), name="db", rate=1)


def test_a_socket_timeout_above_the_bound_is_refused() -> None:
    with pytest.raises(cw.ConfigurationError, match=r"timeout must be at most 5 s, got 300"):
        cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", timeout=300)
    with pytest.raises(cw.ConfigurationError, match="socket_timeout"):
        cw.RedisLayer(sync_client(socket_timeout=60, socket_connect_timeout=1))
    with pytest.raises(cw.ConfigurationError, match="socket_timeout"):
        cw.RedisTokenBucket(sync_client(socket_timeout=300), name="db", rate=1)
    # The bound itself is accepted (with the warning a slow timeout draws).
    with pytest.warns(RuntimeWarning, match="socket_timeout"):
        cw.RedisLayer(sync_client(socket_timeout=MAX_SOCKET_TIMEOUT))
    assert cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", timeout=MAX_SOCKET_TIMEOUT)


@pytest.mark.parametrize("name", ["ttl", "stale_ttl", "stale_if_error"])
def test_a_lifetime_that_would_overflow_every_write_is_refused(name: str) -> None:
    settings: dict[str, Any] = {"ttl": 60, name: 1e306}
    with pytest.raises(cw.ConfigurationError, match=f"{name} must be at most 100 years"):
        cw.cached(**settings)
    with pytest.raises(cw.ConfigurationError, match=name):
        cw.guard(**settings)
    settings[name] = MAX_LIFETIME
    assert cw.cached(**settings)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:6379/0", "must start with redis://"),
        ("127.0.0.1:6379", "must start with redis://"),
        ("redis://127.0.0.1:99999/0", "invalid port"),
        ("redis://127.0.0.1:0/0", "invalid port"),
        ("redis://127.0.0.1:port/0", "invalid port"),
        ("redis://:6379/0", "no valid host"),
        ("redis://bad host:6379/0", "no valid host"),
        ("redis://127.0.0.1:6379/zero", "database number"),
        ("unix://", "no socket path"),
    ],
)
def test_from_url_refuses_a_url_it_could_never_connect_to(url: str, problem: str) -> None:
    with pytest.raises(cw.ConfigurationError, match=problem):
        cw.RedisLayer.from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@cache.internal.example:6380/2",
        "redis://localhost",
        "redis://[::1]:6379",
        "unix:///run/redis/redis.sock?db=1",
        # Not resolved at construction: it may resolve later (a container starting after this
        # one), and at run time it is a connection error like any other, that is a miss.
        "redis://no-such-host.invalid:6379/0",
    ],
)
def test_from_url_accepts_every_connectable_form(url: str) -> None:
    assert check_url(url) == url
    assert cw.RedisLayer.from_url(url)


def test_an_unresolvable_host_is_a_miss_at_run_time_not_an_error() -> None:
    layer = cw.RedisLayer.from_url("redis://no-such-host.invalid:6379/0", timeout=0.2)
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[layer])
    def load(key: str) -> str:
        calls.append(key)
        return key

    @cw.cached(ttl=60, layers=[layer])
    async def aload(key: str) -> str:
        calls.append(key)
        return key

    assert load("a") == "a"
    assert asyncio.run(aload("b")) == "b"
    assert calls == ["a", "b"]
