"""Coherent across processes (issue 13): real Redis, real processes.

Each failure case of the issue is a regression test here, next to a sibling that switches the
mechanism off and shows the test's check catches the failure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheward as cw
from cacheward._background import drain
from cacheward._pending import Pending
from cacheward._readpath import Driver
from servers import RedisServer, TcpProxy

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("coherence_worker.py")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def space(server: RedisServer) -> Iterator[str]:
    yield f"coh{uuid.uuid4().hex[:10]}"
    while OPENED:  # layers and clients the test made: closed here, not by the collector
        OPENED.pop().close()


OPENED: list[Any] = []


def client(server: RedisServer) -> Any:
    made = server.client()
    OPENED.append(made)
    return made


def start(server: RedisServer, space: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), server.url, space, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()


def wait_for(client: Any, name: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get(name) is None:
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.01)


def loader(server: RedisServer, space: str, layer: Any = None) -> Any:
    """This process's copy of the workers' function (same namespace, fresh layers)."""
    layer = layer or cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    OPENED.append(layer)
    data = client(server)
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="config")
    def load(customer: str) -> str:
        calls.append(customer)
        return (data.get(f"truth:{space}") or b"").decode()

    load.calls = calls  # type: ignore[attr-defined]
    load.layer = layer  # type: ignore[attr-defined]
    return load


# --- case 2: an invalidation lost to a rebuild in flight elsewhere -------------------------------


class PlainDeleteLayer(cw.RedisLayer):
    """The mechanism switched off: invalidate() is a plain DEL again (no fence)."""

    __slots__ = ()
    fence = None  # type: ignore[assignment]
    afence = None  # type: ignore[assignment]


def _race(server: RedisServer, space: str, layer: Any) -> tuple[str, str]:
    """B rebuilds for 1.5 s; meanwhile A changes the data and invalidates; then a fresh
    process reads. Returns (what B's caller got, what the fresh reader gets)."""
    data = client(server)
    data.set(f"truth:{space}", "old")
    rebuild = start(server, space, "rebuild")
    wait_for(data, f"started:{space}")
    data.set(f"truth:{space}", "new")
    writer = loader(server, space, layer)
    writer.invalidate("c1")
    got = finish(rebuild)
    fresh = loader(server, space)
    return got, fresh("c1")


def test_an_invalidation_fences_a_rebuild_in_flight_in_another_process(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    got, fresh = _race(server, space, layer)
    assert got == "old"  # the rebuild's result reached its own caller...
    assert fresh == "new"  # ...but was stored nowhere: a fresh process fetches the new data
    assert layer.stats().fences == 1


def test_sibling_with_a_plain_delete_the_rebuild_stores_the_old_value(
    server: RedisServer, space: str
) -> None:
    layer = PlainDeleteLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    got, fresh = _race(server, space, layer)
    assert got == "old"
    assert fresh == "old"  # the bug: what the fence prevents


def _race_set(server: RedisServer, space: str, layer: Any) -> tuple[str, str]:
    """As :func:`_race`, but A writes the new value through with ``set`` (issue 13 item 6)."""
    data = client(server)
    data.set(f"truth:{space}", "old")
    rebuild = start(server, space, "rebuild")
    wait_for(data, f"started:{space}")
    writer = loader(server, space, layer)
    assert writer.set("new", "c1").done
    got = finish(rebuild)
    fresh = loader(server, space)
    return got, fresh("c1")


def test_a_set_fences_a_rebuild_in_flight_in_another_process(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    got, fresh = _race_set(server, space, layer)
    assert got == "old"  # the rebuild answered its own caller...
    assert fresh == "new"  # ...and the written value stayed: the rebuild was fenced
    assert layer.stats().fences == 1


def test_sibling_with_an_unfenced_write_the_rebuild_overwrites_the_set(
    server: RedisServer, space: str
) -> None:
    layer = PlainDeleteLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    got, fresh = _race_set(server, space, layer)
    assert got == "old"
    assert fresh == "old"  # the older rebuild stored over the written value


def _key(name: str = "k") -> cw.CacheKey:
    return cw.CacheKey(name, "config:v1", (name,), {}, ("customer",))


def test_fence_refuses_the_older_leaseholder_and_lets_the_next_one_store(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    key = _key()
    old = layer.lease(key, ttl=30).token
    assert old is not None
    layer.fence(key)  # an invalidation while the rebuild is under way
    assert layer.publish(key, cw.Entry("old", time.time(), 1e12, 1e12), old, lease_ttl=30) is None
    assert layer.get(key) is None
    new = layer.lease(key, ttl=30).token  # the lease was dropped: the next caller takes one
    assert new is not None
    assert new > old
    assert layer.publish(key, cw.Entry("new", time.time(), 1e12, 1e12), new, lease_ttl=30)
    found = layer.get(key)
    assert found is not None
    assert found.value == "new"
    assert layer.stats().writes_fenced == 1
    layer.close()


def test_a_value_written_over_a_key_fences_older_rebuilds_and_unfenced_older_writes(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
    key = _key("w")
    token = layer.lease(key, ttl=30).token
    assert token is not None
    before = time.time() - 1.0  # an entry made before the write (an unfenced writer)
    layer.fence(key, cw.Entry("written", time.time(), 1e12, 1e12))
    layer.set(key, cw.Entry("older", before, 1e12, 1e12))
    assert (
        layer.publish(key, cw.Entry("rebuilt", time.time(), 1e12, 1e12), token, lease_ttl=30)
        is None
    )
    found = layer.get(key)
    assert found is not None
    assert found.value == "written"
    layer.close()


def test_afence_is_the_same_for_async_callers(server: RedisServer, space: str) -> None:
    async def main() -> None:
        layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)
        key = _key("a")
        reply = await layer.alease(key, ttl=30)
        assert reply.token is not None
        await layer.afence(key)
        entry = cw.Entry("old", time.time(), 1e12, 1e12)
        assert await layer.apublish(key, entry, reply.token, lease_ttl=30) is None
        assert await layer.aget(key) is None
        await layer.aclose()

    asyncio.run(main())


# --- case 3: an invalidation dropped while Redis is sick -----------------------------------------


def _while_hung(server: RedisServer, space: str) -> tuple[Any, Any]:
    """Store "old", hang the path to Redis, change the data, invalidate: (load, result)."""
    data = client(server)
    data.set(f"truth:{space}", "old")
    proxy = TcpProxy(server.port).__enter__()
    OPENED.append(types.SimpleNamespace(close=proxy.stop))
    layer = cw.RedisLayer.from_url(
        proxy.url, socket_timeout=0.2, namespace=space, breaker_reset=0.2
    )
    load = loader(server, space, layer)
    assert load("c1") == "old"
    assert drain(layer, 5.0)
    proxy.blackhole()  # hung: nothing this process sends reaches Redis
    result = load.invalidate("c1")
    proxy.heal()
    data.set(f"truth:{space}", "new")
    return load, result


def _eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def test_an_invalidation_while_redis_hangs_is_kept_and_replayed_when_it_answers(
    server: RedisServer, space: str
) -> None:
    load, result = _while_hung(server, space)
    assert not result
    assert result.pending == ("redis",)
    # Nothing in this process reads Redis again: the background replay delivers it.
    _eventually(lambda: load.stats().invalidations_pending == 0)
    assert load.stats().invalidations_replayed == 1
    assert finish(start(server, space, "read")) == "new"  # another process: the new data


def test_sibling_without_keeping_it_other_processes_serve_the_old_value(
    server: RedisServer, space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Pending, "keep", lambda self, key, now: None)
    load, result = _while_hung(server, space)
    assert load.stats().invalidations_pending == 0
    assert finish(start(server, space, "read")) == "old"  # the bug


def test_pending_invalidations_are_replayed_before_this_process_reads_the_layer(
    server: RedisServer, space: str
) -> None:
    load, result = _while_hung(server, space)
    assert result.pending == ("redis",)
    assert load("c1") == "new"  # the read replays first, then misses and fetches
    assert load.calls == ["c1", "c1"]


def test_sibling_reading_without_replaying_first_serves_the_old_value(
    server: RedisServer, space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_replay(self: Any, guarded: Any) -> Any:
        return True
        yield  # a plan that sends nothing

    monkeypatch.setattr(Driver, "replay", no_replay)
    load, result = _while_hung(server, space)
    assert result.pending == ("redis",)
    assert load("c1") == "old"


def test_async_callers_get_the_same_fence_and_replay(server: RedisServer, space: str) -> None:
    """The asyncio client's path: the invalidation is kept while the path to Redis is hung,
    replayed by a task once it answers; another process then reads the new data."""
    data = client(server)
    data.set(f"truth:{space}", "old")
    proxy = TcpProxy(server.port).__enter__()
    OPENED.append(types.SimpleNamespace(close=proxy.stop))
    layer = cw.RedisLayer.from_url(
        proxy.url, socket_timeout=0.2, namespace=space, breaker_reset=0.2
    )

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="config")
    async def load(customer: str) -> str:
        return (data.get(f"truth:{space}") or b"").decode()

    async def main() -> None:
        assert await load("c1") == "old"
        for _ in range(500):  # the fetch task stores after answering (bounded wait)
            if data.keys(f"cacheward:{space}:*"):
                break
            await asyncio.sleep(0.01)
        assert data.keys(f"cacheward:{space}:*")  # "old" is in Redis
        proxy.blackhole()
        result = await load.invalidate("c1")
        assert result.pending == ("redis",)
        proxy.heal()
        data.set(f"truth:{space}", "new")
        for _ in range(3000):  # bounded: the replay is due within a few breaker resets
            if load.stats().invalidations_pending == 0:
                break
            await asyncio.sleep(0.01)
        assert load.stats().invalidations_replayed == 1
        await layer.aclose()

    asyncio.run(main())
    assert finish(start(server, space, "read")) == "new"
