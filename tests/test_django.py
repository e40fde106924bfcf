"""cacheward.contrib.django: the cache backend and the example project, on a real Redis.

The example project (examples/django_project) runs through Django's test client. Every test run
uses its own key prefix; servers this file starts are stopped by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

import django
import redis

ROOT = Path(__file__).resolve().parents[1]
PREFIX = f"test-django-{uuid.uuid4().hex[:10]}"

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module", autouse=True)
def project(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
    os.environ["EXAMPLE_DB"] = str(tmp_path_factory.mktemp("django") / "db.sqlite3")
    os.environ["EXAMPLE_KEY_PREFIX"] = PREFIX
    os.environ["REDIS_URL"] = redis_url
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    from examples.django_project.shop.models import Setting

    Setting.objects.bulk_create(
        [
            Setting(customer=f"c{i}", name=f"s{j}", value=f"v{i}.{j}")
            for i in range(5)
            for j in range(3)
        ]
    )
    yield
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*{PREFIX}*", count=1000))
        keys += list(client.scan_iter(match="cacheward:django:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def views() -> Any:
    from django.core.cache import cache
    from examples.django_project.shop import views

    cache.clear()
    views.load_summary.invalidate("c1")
    for name in views.QUERIES:
        views.QUERIES[name] = 0
    return views


@pytest.fixture
def client() -> Any:
    from django.test import Client

    return Client()


def dead_redis_caches(url: str, **options: Any) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "cacheward.contrib.django.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"{PREFIX}-{uuid.uuid4().hex[:6]}",
            "OPTIONS": {"SOCKET_TIMEOUT": 0.1, **options},
        }
    }


# --- the example project through the test client ---


def test_get_or_set_view_reads_the_database_once(client: Any, views: Any) -> None:
    first = client.get("/customers/c1/config")
    second = client.get("/customers/c1/config")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["config"] == {"s0": "v1.0", "s1": "v1.1", "s2": "v1.2"}
    assert views.QUERIES["config"] == 1
    assert client.delete("/customers/c1/config").status_code == 204
    client.get("/customers/c1/config")
    assert views.QUERIES["config"] == 2


def test_guard_view_configured_from_settings(client: Any, views: Any) -> None:
    assert client.get("/customers/c1/summary").json() == {
        "settings": 3,
        "names": ["s0", "s1", "s2"],
    }
    client.get("/customers/c1/summary")
    assert views.QUERIES["summary"] == 1
    layers = views.load_summary.stats()
    assert layers.cache.hits == 1
    assert type(views.load_summary.limiter).__name__ == "RedisTokenBucket"
    assert client.delete("/customers/c1/summary").status_code == 204
    client.get("/customers/c1/summary")
    assert views.QUERIES["summary"] == 2


def test_concurrent_requests_for_one_key_share_one_query(
    client: Any, views: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.cache import cache
    from django.test import Client

    real = views.build_config
    callers = 12
    shared = cache._shared
    before = shared.fill.stats().coalesced_waits

    def slow(customer_id: str) -> dict[str, str]:
        # Hold the fill until every other caller waits on it (bounded).
        for _ in range(1000):
            if shared.fill.stats().coalesced_waits >= before + callers - 1:
                break
            time.sleep(0.01)
        return real(customer_id)

    monkeypatch.setattr(views, "build_config", slow)
    results: list[int] = []

    def call() -> None:
        results.append(Client().get("/customers/c2/config").status_code)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * callers
    assert views.QUERIES["config"] == 1


def test_test_mode_sends_every_request_to_the_database(client: Any, views: Any) -> None:
    from cacheward.testing import disabled

    client.get("/customers/c1/config")
    with disabled():
        for _ in range(3):
            assert client.get("/customers/c1/config").status_code == 200
            client.get("/customers/c1/summary")
    assert views.QUERIES == {"config": 4, "summary": 3}
    client.get("/customers/c1/config")
    assert views.QUERIES["config"] == 4  # stored before the block: still a hit


def test_redis_down_each_key_costs_one_query_and_no_errors(client: Any, views: Any) -> None:
    from django.core.cache import cache
    from django.test import override_settings

    from servers import free_port

    with override_settings(CACHES=dead_redis_caches(f"redis://127.0.0.1:{free_port()}/0")):
        statuses = [client.get(f"/customers/c{i % 3}/config").status_code for i in range(30)]
        stats = cache.stats()
    assert statuses == [200] * 30
    assert views.QUERIES["config"] == 3
    assert stats["breaker"] == "open"
    assert stats["fallback_hits"] >= 20


def test_redis_killed_then_back_empty_recovers(client: Any, views: Any) -> None:
    from django.core.cache import cache
    from django.test import override_settings

    from servers import RedisServer

    with (
        RedisServer.started() as server,
        override_settings(
            CACHES=dead_redis_caches(server.url, BREAKER_RESET=0.2, BREAKER_FAILURES=1)
        ),
    ):
        client.get("/customers/c3/config")
        assert views.QUERIES["config"] == 1
        server.kill()
        for _ in range(10):
            assert client.get("/customers/c3/config").status_code == 200
        assert views.QUERIES["config"] == 2  # one query, then the fallback
        server.restart()
        for _ in range(200):  # bounded: until the breaker's probe finds Redis again
            client.get("/customers/c3/config")
            if cache.stats()["breaker"] == "closed" and cache.stats()["fallback_size"] == 0:
                break
            time.sleep(0.02)
        client.get("/customers/c3/config")
        assert cache.stats()["breaker"] == "closed"
        queries = views.QUERIES["config"]
        for _ in range(5):
            client.get("/customers/c3/config")
        assert views.QUERIES["config"] == queries  # served from the restarted Redis
        assert server.command("DBSIZE") >= 1


def test_redis_hung_each_key_costs_one_query_and_no_errors(client: Any, views: Any) -> None:
    from django.core.cache import cache
    from django.test import override_settings

    from servers import RedisServer

    with (
        RedisServer.started() as server,
        override_settings(CACHES=dead_redis_caches(server.url, BREAKER_RESET=60)),
    ):
        client.get("/customers/c4/config")
        server.pause()  # SIGSTOP: connections open, nothing answers
        try:
            statuses = [
                client.get(f"/customers/c{i % 2 + 3}/config").status_code for i in range(20)
            ]
            stats = cache.stats()
        finally:
            server.resume()
    assert statuses == [200] * 20
    # c4 was cached before the hang, c3 was not: at most one query each during the hang.
    assert views.QUERIES["config"] <= 3
    assert stats["redis"]["timeouts"] + stats["redis"]["stalled"] >= 1


# --- the backend's API ---


def test_cache_api_semantics(views: Any) -> None:
    import datetime

    from django.core.cache import cache

    value = {"when": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc), "n": {1, 2}}
    cache.set("a", value, 30)
    assert cache.get("a") == value
    assert cache.add("a", 1) is False
    assert cache.add("b", 1) is True
    assert cache.get("b") == 1
    assert cache.get_or_set("c", lambda: "made") == "made"
    assert cache.get_or_set("c", lambda: "again") == "made"
    assert cache.has_key("c")
    assert cache.touch("c", 60) is True
    assert cache.delete("c") is True
    assert cache.delete("c") is False  # nothing left to delete
    assert cache.get("c", "gone") == "gone"
    cache.set("d", 1, 0)  # a timeout of zero expires at once
    assert cache.get("d") is None
    cache.set_many({"e": 1, "f": 2})
    assert cache.get_many(["e", "f", "g"]) == {"e": 1, "f": 2}
    assert cache.incr("e") == 2
    cache.set("forever", 1, None)
    assert cache.get("forever") == 1


def test_aget_or_set_is_single_flight(views: Any) -> None:
    import asyncio

    from django.core.cache import cache

    calls: list[int] = []

    def make() -> str:
        calls.append(1)
        time.sleep(0.05)
        return "made once"

    async def many() -> list[Any]:
        return await asyncio.gather(*(cache.aget_or_set("async-key", make) for _ in range(8)))

    assert asyncio.run(many()) == ["made once"] * 8
    assert calls == [1]


def test_tampered_bytes_are_a_miss(views: Any) -> None:
    from django.core.cache import cache

    cache.set("t", {"ok": True})
    made, key = cache._key("t", None)
    layer = cache._shared.layer
    layer._sync().set(layer.redis_key(key), b"\x80\x05garbage-not-signed")
    assert cache.get("t", "miss") == "miss"
    assert cache.get_or_set("t", lambda: "rebuilt") == "rebuilt"


def test_stale_if_error_serves_the_old_value_when_the_default_fails(views: Any) -> None:
    from django.core.cache import caches
    from django.test import override_settings

    settings = dead_redis_caches("redis://127.0.0.1:1/0")
    settings["default"]["LOCATION"] = os.environ["REDIS_URL"]
    settings["default"]["OPTIONS"]["STALE_IF_ERROR"] = 600
    with override_settings(CACHES=settings):
        cache = caches["default"]
        assert cache.get_or_set("s", lambda: "old", timeout=0.05) == "old"
        time.sleep(0.1)  # past the timeout, within STALE_IF_ERROR

        def fail() -> str:
            raise ConnectionError("db down")

        assert cache.get("s") is None  # get never serves stale
        assert cache.get_or_set("s", fail) == "old"
        with pytest.raises(ConnectionError):
            cache.get_or_set("never-set", fail)


def test_misconfiguration_fails_at_construction() -> None:
    import cacheward as cw
    from cacheward.contrib.django import RedisCache

    with pytest.raises(cw.ConfigurationError, match="unknown OPTIONS TIMEOUTS"):
        RedisCache("redis://127.0.0.1:6379/0", {"OPTIONS": {"TIMEOUTS": 1}})
    with pytest.raises(cw.ConfigurationError, match="SERIALIZER"):
        RedisCache("redis://127.0.0.1:6379/0", {"OPTIONS": {"SERIALIZER": "yaml"}})
    with pytest.raises(cw.ConfigurationError, match="SOCKET_TIMEOUT"):
        RedisCache("redis://127.0.0.1:6379/0", {"OPTIONS": {"SOCKET_TIMEOUT": 0}})
    with pytest.raises(cw.ConfigurationError, match="LOCATION"):
        RedisCache("", {})


def test_settings_decorators_reject_unknown_keys() -> None:
    from django.test import override_settings

    import cacheward as cw
    from cacheward.contrib import django as cw_django

    with (
        override_settings(CACHEWARD={"REDIS_URLS": "x"}),
        pytest.raises(cw.ConfigurationError, match="REDIS_URLS"),
    ):
        cw_django.cached(ttl=1)


def test_settings_decorators_without_redis_use_memory_only() -> None:
    from django.test import override_settings

    import cacheward as cw
    from cacheward.contrib import django as cw_django

    with override_settings(CACHEWARD={"MEMORY_MAXSIZE": 5}):
        layers = cw_django.layers()
        assert [type(layer) for layer in layers] == [cw.MemoryLayer]
        assert isinstance(cw_django.limiter(), cw.TokenBucket)

        @cw_django.cached(ttl=10)
        def f(x: int) -> int:
            return x * 2

        assert f(2) == 4


SCRIPT = """
import os, sys, time
sys.path.insert(0, os.environ["ROOT"])
from examples.django_project import settings as s
s.CACHES["default"]["OPTIONS"]["FILL_TIMEOUT"] = 60
import django
django.setup()
import redis
from django.core.cache import cache
r = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
count, arrived = os.environ["COUNT_KEY"], os.environ["ARRIVED_KEY"]
n = int(os.environ["PROCESSES"])

def compute():
    r.incr(count)
    for _ in range(3000):  # hold the lease until every process waits for it (bounded)
        if int(r.get(arrived) or 0) >= n:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    return "computed once"

r.incr(arrived)
print(cache.get_or_set("cross-process", compute, 60))
"""


@pytest.mark.slow
def test_get_or_set_is_single_flight_across_processes(redis_url: str) -> None:
    processes = 3
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "ROOT": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "examples.django_project.settings",
        "EXAMPLE_KEY_PREFIX": f"{PREFIX}-{tag}",
        "COUNT_KEY": f"{PREFIX}:{tag}:count",
        "ARRIVED_KEY": f"{PREFIX}:{tag}:arrived",
        "PROCESSES": str(processes),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(processes)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    assert outputs == ["computed once"] * processes
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        assert int(client.get(env["COUNT_KEY"]) or 0) == 1
    finally:
        client.close()


def test_a_missing_django_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "django" or m.startswith("django.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    for name in [m for m in sys.modules if m.startswith("cacheward.contrib.django")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'cacheward\[django\]'"):
        importlib.import_module("cacheward.contrib.django")
