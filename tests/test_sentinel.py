"""Redis Sentinel: ``redis+sentinel://`` URLs, and a real master failover on loopback.

The failover tests start a master, a replica and ``redis-server --sentinel`` (tests/
sentinel_servers.py), SIGKILL the master while callers keep calling, and check that no caller
saw an exception or waited on Redis past its timeouts (every call is served by the backend
during the switch: a miss), and that the layer and the shared bucket are back on Redis — on the
promoted replica — afterwards. The seconds are measured by ``python -m benchmarks sentinel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import pytest

import cacheward as cw
from cacheward._sentinel import SentinelTarget, parse_sentinel_url

pytestmark = pytest.mark.redis


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26380,10.0.0.2/cache",
            SentinelTarget((("10.0.0.1", 26380), ("10.0.0.2", 26379)), "cache"),
        ),
        (
            "redis+sentinel://user:s%40cret@h1:1/svc/3?sentinel_password=x",
            SentinelTarget((("h1", 1),), "svc", 3, "user", "s@cret", "x"),
        ),
        (
            "redis+sentinel://:pw@[::1]:5000/svc",
            SentinelTarget((("::1", 5000),), "svc", 0, None, "pw"),
        ),
    ],
)
def test_urls_parse(url: str, expected: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+sentinel://h1:26379", "name the Sentinel service"),
        ("redis+sentinel://h1/svc/x", "db must be a number"),
        ("redis+sentinel://h1:99999/svc", "not 1-65535"),
        ("redis+sentinel://h1,,h2/svc", "empty Sentinel address"),
        ("redis+sentinel://h1/svc?ssl=1", "unknown options ssl"),
    ],
)
def test_bad_urls_fail_at_construction_naming_url(url: str, match: str) -> None:
    with pytest.raises(cw.ConfigurationError, match=match):
        cw.RedisLayer.from_url(url)
    with pytest.raises(cw.ConfigurationError, match="url"):
        cw.redis_client(url)


def test_repr_hides_passwords() -> None:
    layer = cw.RedisLayer.from_url("redis+sentinel://u:pw@h1/svc?sentinel_password=spw")
    assert "pw" not in repr(layer).replace("sentinel_password", "")
    assert "redis+sentinel://u:***@h1/svc?sentinel_password=***" in repr(layer)


def test_cluster_and_sentinel_do_not_mix() -> None:
    with pytest.raises(cw.ConfigurationError, match="cluster=True cannot be combined"):
        cw.RedisLayer.from_url("redis+sentinel://h1/svc", cluster=True)


def test_redis_client_for_plain_urls_has_safe_settings(redis_url: str) -> None:
    client = cw.redis_client(redis_url, timeout=0.2)
    kwargs = client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == 0.2
    assert kwargs["socket_connect_timeout"] == 0.2
    assert client.ping()
    client.close()


@pytest.fixture
def sentinel() -> Any:
    from sentinel_servers import SentinelSetup

    with SentinelSetup.started() as setup:
        yield setup


def test_layer_and_bucket_talk_to_the_master(sentinel: Any) -> None:
    layer = cw.RedisLayer.from_url(sentinel.url, timeout=0.2, namespace="s1")
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[layer])
    def fetch(key: str) -> str:
        calls.append(key)
        return key.upper()

    assert fetch("a") == "A"
    layer.close()  # waits for the write, made after the caller was answered
    assert fetch("a") == "A"  # from Redis
    assert calls == ["a"]
    assert layer.events()["hits"] == 1
    assert sentinel.master.command("DBSIZE") >= 1
    bucket = cw.RedisTokenBucket(
        cw.redis_client(sentinel.url, timeout=0.2), name="s1", rate=100, burst=10
    )
    assert bucket.reserve(0.0) == 0.0
    assert bucket.shared_takes == 1
    layer.close()
    bucket.client.close()


def call_through_failover(sentinel: Any, call: Any, layer: cw.RedisLayer) -> dict[str, Any]:
    """Call ``call(key)`` in a loop while the master is killed and the replica promoted; then
    until the layer serves a hit again (bounded). Returns what happened."""
    keys = itertools.cycle([f"k{i}" for i in range(5)])
    errors: list[BaseException] = []
    for _ in range(20):  # warm: every key stored on the master
        call(next(keys))
    import threading

    done = threading.Event()

    def caller() -> None:
        while not done.is_set():
            try:
                call(next(keys))
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.005)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        new_master, _switch = sentinel.fail_over()
        hits_at_switch = layer.events()["hits"]
        for _ in range(400):  # at most ~20 s: the breaker probes, then reads come back
            time.sleep(0.05)
            if layer.events()["hits"] > hits_at_switch + 5:
                break
    finally:
        done.set()
        thread.join(30)
    return {
        "errors": errors,
        "hits_after": layer.events()["hits"] - hits_at_switch,
        "new_master_keys": new_master.command("DBSIZE"),
        "events": layer.events(),
    }


@pytest.mark.slow
def test_failover_sync_callers_get_misses_then_the_new_master(sentinel: Any) -> None:
    layer = cw.RedisLayer.from_url(sentinel.url, timeout=0.1, namespace="fo")
    fetches: list[str] = []

    @cw.cached(ttl=0.2, layers=[layer], breaker_reset=0.3, backoff=0)
    def fetch(key: str) -> str:
        fetches.append(key)
        return key.upper()

    result = call_through_failover(sentinel, fetch, layer)
    assert result["errors"] == []
    assert result["hits_after"] > 5, result["events"]
    assert result["new_master_keys"] >= 1
    assert result["events"]["errors"] + result["events"]["timeouts"] >= 1  # the switch was seen
    layer.close()


@pytest.mark.slow
def test_failover_async_callers(sentinel: Any) -> None:
    layer = cw.RedisLayer.from_url(sentinel.url, timeout=0.1, namespace="afo")

    @cw.cached(ttl=0.2, layers=[layer], breaker_reset=0.3, backoff=0)
    async def fetch(key: str) -> str:
        return key.upper()

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def call(key: str) -> str:
            return asyncio.run_coroutine_threadsafe(fetch(key), loop).result(30)

        try:
            return await asyncio.to_thread(call_through_failover, sentinel, call, layer)
        finally:
            await layer.aclose()

    result = asyncio.run(scenario())
    assert result["errors"] == []
    assert result["hits_after"] > 5, result["events"]


@pytest.mark.slow
def test_failover_bucket_falls_back_then_returns_to_the_new_master(sentinel: Any) -> None:
    bucket = cw.RedisTokenBucket(
        cw.redis_client(sentinel.url, timeout=0.1),
        name="fo",
        rate=1000,
        burst=1000,
        probe_interval=0.2,
    )
    assert bucket.reserve(0.0) == 0.0
    sentinel.fail_over()
    for _ in range(400):  # bounded: until a take is shared again
        # A bucket the new master does not hold restarts empty for this process (it used the
        # old one) and charges its local takes as debt: a refusal meanwhile is documented.
        with contextlib.suppress(cw.RateLimited):
            bucket.reserve(0.0)
        if bucket.mode == "shared" and bucket.shared_takes > 1:
            break
        time.sleep(0.05)
    assert bucket.fallback_takes >= 1 or bucket.errors >= 1
    assert bucket.mode == "shared"
    assert bucket.shared_takes > 1
    bucket.client.close()
