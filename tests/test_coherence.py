"""Coherent across processes (issue 13): real Redis, real processes.

Each failure case of the issue is a regression test here, next to a sibling that switches the
mechanism off and shows the test's check catches the failure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheward as cw
from servers import RedisServer

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("coherence_worker.py")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def space(server: RedisServer) -> str:
    return f"coh{uuid.uuid4().hex[:10]}"


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
    layer = layer or cw.RedisLayer.from_url(server.url, timeout=2.0, namespace=space)
    data = server.client()
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
    data = server.client()
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
    layer = cw.RedisLayer.from_url(server.url, timeout=2.0, namespace=space)
    got, fresh = _race(server, space, layer)
    assert got == "old"  # the rebuild's result reached its own caller...
    assert fresh == "new"  # ...but was stored nowhere: a fresh process fetches the new data
    assert layer.events()["fences"] == 1


def test_sibling_with_a_plain_delete_the_rebuild_stores_the_old_value(
    server: RedisServer, space: str
) -> None:
    layer = PlainDeleteLayer.from_url(server.url, timeout=2.0, namespace=space)
    got, fresh = _race(server, space, layer)
    assert got == "old"
    assert fresh == "old"  # the bug: what the fence prevents


def _key(name: str = "k") -> cw.CacheKey:
    return cw.CacheKey(name, "config:v1", (name,), {}, ("customer",))


def test_fence_refuses_the_older_leaseholder_and_lets_the_next_one_store(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, timeout=2.0, namespace=space)
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
    assert layer.events()["writes_fenced"] == 1
    layer.close()


def test_a_value_written_over_a_key_fences_older_rebuilds_and_unfenced_older_writes(
    server: RedisServer, space: str
) -> None:
    layer = cw.RedisLayer.from_url(server.url, timeout=2.0, namespace=space)
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
        layer = cw.RedisLayer.from_url(server.url, timeout=2.0, namespace=space)
        key = _key("a")
        reply = await layer.alease(key, ttl=30)
        assert reply.token is not None
        await layer.afence(key)
        entry = cw.Entry("old", time.time(), 1e12, 1e12)
        assert await layer.apublish(key, entry, reply.token, lease_ttl=30) is None
        assert await layer.aget(key) is None
        await layer.aclose()

    asyncio.run(main())
