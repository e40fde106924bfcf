"""RedisLayer, its leases and its scripts on a real 3-master Redis Cluster started on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._redis import RedisLayer
from servers import RedisClusterServers

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers.started() as nodes:
        yield nodes


@pytest.fixture
def url(cluster: RedisClusterServers) -> str:
    cluster.flushall()
    return cluster.url


def make_key(name: Any) -> CacheKey:
    return CacheKey(name, "cluster:v1", (name,), {}, ("name",))


def entry(value: Any, created: float | None = None) -> Entry:
    now = time.time() if created is None else created
    return Entry(value, now, now + 60, now + 120, now + 180)


def test_entries_spread_over_the_shards_and_round_trip(
    url: str, cluster: RedisClusterServers
) -> None:
    from redis.crc import key_slot

    layer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True, namespace="svc")
    keys = [make_key(i) for i in range(30)]
    for i, key in enumerate(keys):
        layer.set(key, entry({"i": i}))
    for i, key in enumerate(keys):
        assert layer.get(key).value == {"i": i}  # type: ignore[union-attr]
    slots = {key_slot(layer.redis_key(k).encode()) for k in keys}
    owners = {cluster.node_for_slot(slot).port for slot in slots}
    assert len(owners) == 3  # all three masters hold entries
    layer.delete(keys[0])
    assert layer.get(keys[0]) is None
    layer.clear()  # SCAN on every master
    assert all(layer.get(k) is None for k in keys)
    assert layer.events()["errors"] == 0
    layer.close()


def test_leases_and_fenced_writes_run_on_the_owning_shard(url: str) -> None:
    a = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)
    b = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)
    for i in range(10):  # keys on every shard: the scripts' keys must share a slot each time
        key = make_key(f"lease-{i}")
        token = a.acquire_lease(key, ttl=5)
        assert token is not None
        assert b.acquire_lease(key, ttl=5) is None
        assert a.set_fenced(key, entry(i), token)
        a.release_lease(key, token)
        assert b.acquire_lease(key, ttl=5) is None  # fresh value there: declined
        assert b.get(key).value == i  # type: ignore[union-attr]
    assert a.events()["leases_acquired"] == 10
    assert b.events()["leases_declined"] == 10
    a.close()
    b.close()


def test_scripts_are_reloaded_after_a_script_flush(url: str, cluster: RedisClusterServers) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)
    key = make_key("flushed")
    layer.set(key, entry(1))
    for node in cluster.nodes:
        node.command("SCRIPT", "FLUSH")
    assert layer.set_fenced(key, entry(2, time.time() + 1), 0)  # NOSCRIPT -> load -> run
    assert layer.get(key).value == 2  # type: ignore[union-attr]
    layer.close()


def test_async_cluster_client(url: str) -> None:
    async def main() -> None:
        layer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)
        keys = [make_key(f"a{i}") for i in range(10)]
        for key in keys:
            await layer.aset(key, entry(key.local))
        for key in keys:
            assert (await layer.aget(key)).value == key.local  # type: ignore[union-attr]
        token = await layer.aacquire_lease(make_key("cold"), ttl=5)
        assert token is not None
        await layer.arelease_lease(make_key("cold"), token)
        await layer.aclear()
        assert await layer.aget(keys[0]) is None
        await layer.aclose()

    asyncio.run(main())


def test_a_cluster_client_is_checked_like_any_other(cluster: RedisClusterServers) -> None:
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    # (Timeouts of 1 s: what is checked is the clients' make-up, and a loaded 2-core machine
    # can take longer than 0.2 s to learn the cluster's nodes.)
    client = RedisCluster.from_url(cluster.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    retry = client.retry
    layer = RedisLayer(client)  # redis-py's retries: a private client without them, no warning
    layer.set(make_key("y"), entry(1))
    assert layer.get(make_key("y")) is not None
    assert client.retry is retry  # the user's: untouched
    assert client.retry.get_retries() > 0
    # Every node's connections are bounded per command (tests/test_redis_deadlines.py).
    nodes = layer._sync().get_nodes()
    assert nodes
    assert all(
        n.redis_connection.connection_pool.connection_class._cacheward_deadline for n in nodes
    )
    from_url = RedisLayer.from_url(
        cluster.url, cluster=True, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    from_url.set(make_key("z"), entry(1))
    assert all(
        n.redis_connection.connection_pool.connection_class._cacheward_deadline
        for n in from_url._sync().get_nodes()
    )
    from_url.close()
    layer.close()
    client.close()
    client = RedisCluster.from_url(
        cluster.url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    layer = RedisLayer(client)
    assert layer.cluster
    layer.set(make_key("x"), entry(1))
    assert layer.get(make_key("x")) is not None
    client.close()


def test_cross_process_single_flight_on_the_cluster(url: str) -> None:
    calls: list[str] = []
    stacks = []
    for _ in range(4):  # four stacks with their own L1 and lease owner: four "processes"
        layer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="cl")
        def load(name: str) -> dict[str, str]:
            calls.append(name)
            time.sleep(0.2)
            return {"name": name}

        stacks.append((load, layer))
    barrier = threading.Barrier(40)
    results: list[Any] = []

    def call(fn: Any) -> None:
        barrier.wait()
        results.append(fn("cold"))

    threads = [threading.Thread(target=call, args=(fn,)) for fn, _ in stacks for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == ["cold"]
    assert results == [{"name": "cold"}] * 40
    for _, layer in stacks:
        layer.close()


def test_a_dead_shard_is_a_miss_for_its_keys_never_an_error_or_a_hang() -> None:
    calls: list[int] = []
    with RedisClusterServers.started() as own:
        layer = RedisLayer.from_url(own.url, cluster=True, socket_timeout=0.2)

        @cw.cached(
            ttl=0.2, stale_ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="shard"
        )
        def load(i: int) -> dict[str, int]:
            calls.append(i)
            return {"i": i}

        for i in range(30):
            load(i)
        assert len(calls) == 30
        own.nodes[0].kill()  # a third of the slots are gone
        calls.clear()
        started = time.monotonic()
        served = 0
        slowest = 0.0
        for _ in range(8):  # a fixed number of passes: stale entries refresh every 0.2 s
            for i in range(30):
                began = time.monotonic()
                assert load(i) == {"i": i}
                slowest = max(slowest, time.monotonic() - began)
                served += 1
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        # Bounded: a call pays at most the client's timeouts while the cluster client
        # rediscovers the topology (connect + read on the dead node), never a hang.
        assert slowest < 2.0, slowest
        # Each key refreshed at most once per freshness period (0.2 s), never once per call;
        # the bound follows the time the passes took, so a loaded machine cannot break it.
        assert len(calls) <= 30 * (elapsed / 0.2 + 1), (len(calls), elapsed)
        layer.close()


def test_fence_runs_on_every_shard_and_fences_older_leases(url: str) -> None:
    """The invalidation script's four keys share the entry's hash slot, and its announcement
    (a plain PUBLISH, delivered cluster-wide) is allowed from a script on any shard."""
    layer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True)
    for index in range(20):  # keys spread over the three masters
        key = make_key(f"fence-{index}")
        token = layer.lease(key, ttl=30).token
        assert token is not None
        assert layer.fence(key, announce=("{chan}", "hello")) > token
        assert layer.publish(key, entry("old"), token, lease_ttl=30) is None
        assert layer.get(key) is None
    assert layer.stats().writes_fenced == 20
    layer.close()


def test_an_asyncio_cluster_client_is_used_through_a_private_one(
    cluster: RedisClusterServers,
) -> None:
    from redis.asyncio.cluster import RedisCluster

    async def main() -> None:
        client = RedisCluster.from_url(cluster.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        retry = client.retry
        layer = RedisLayer(client)
        await layer.aset(make_key("ay"), entry(1))
        assert await layer.aget(make_key("ay")) is not None
        assert client.retry is retry  # the user's: untouched
        assert layer._async() is not client
        assert layer._async().retry.get_retries() == 0
        await layer.aclose()
        await client.aclose()

    asyncio.run(main())


def test_tags_and_clear_on_a_cluster(url: str) -> None:
    """The marks live in other slots than the entries: a read checks them with a second round
    trip, and a fenced entry is a miss (issue 13 item 5)."""
    import uuid

    import cacheward as cw

    space = f"tags{uuid.uuid4().hex[:8]}"
    writer = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True, namespace=space)
    reader = RedisLayer.from_url(url, socket_timeout=1.0, cluster=True, namespace=space)
    truth = {"c1": "old", "c2": "old"}

    def make(layer: RedisLayer) -> Any:
        @cw.cached(ttl=60, layers=[layer], namespace="svc", tags=lambda c: [f"customer:{c}"])
        def load(c: str) -> str:
            return truth[c]

        return load

    first, second = make(writer), make(reader)
    assert [first("c1"), first("c2")] == ["old", "old"]
    truth.update(c1="new", c2="new")
    assert second("c1") == "old"  # shared through the cluster
    assert cw.invalidate_tags("customer:c1", layers=[writer]).done
    assert second("c1") == "new"  # the mark, read from its own slot, fenced the entry
    assert second("c2") == "old"
    assert first.cache_clear().done
    assert second("c2") == "new"
    assert reader.stats().tag_misses >= 1  # a plain read found the entry fenced
    writer.close()
    reader.close()


def _layer_while_the_cluster_hangs(cluster: RedisClusterServers) -> tuple[str, Any]:
    """A user's cluster client made while the cluster answers; the layer made while every node
    is paused. Returns what the constructor did and, once the nodes answer again, a round trip
    through the layer (``None`` if the constructor raised)."""
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    client = RedisCluster.from_url(
        cluster.url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    layer: RedisLayer | None = None
    for node in cluster.nodes:
        node.pause()
    try:
        try:
            layer = RedisLayer(client)
            made = "made"
        except Exception as exc:
            made = type(exc).__name__
    finally:
        for node in cluster.nodes:
            node.resume()
    try:
        if layer is None:
            return made, None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # (its breaker may be open for a moment)
            layer.set(make_key("back"), entry(7))
            found = layer.get(make_key("back"))
            if found is not None:
                return made, found.value
            time.sleep(0.1)
        return made, None
    finally:
        if layer is not None:
            layer.close()
        client.close()


def test_a_layer_made_while_the_cluster_hangs_is_made_and_serves_once_it_answers(
    cluster: RedisClusterServers,
) -> None:
    # The private client (the user's settings, no retries) learns the cluster's nodes when it
    # is made: while no node answers, the layer makes it at first use instead of raising.
    assert _layer_while_the_cluster_hangs(cluster) == ("made", 7)


def test_sibling_without_the_deferral_the_constructor_raises(
    cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mechanism switched off: the private client's error is not one the constructor
    # defers (as before the fix, where nothing was deferred), so it escapes.
    from redis.exceptions import RedisClusterException, RedisError

    import cacheward._redis as layer_module

    real = layer_module.private_client

    def undeferred(client: Any, *, is_async: bool, cluster: bool) -> Any:
        try:
            return real(client, is_async=is_async, cluster=cluster)
        except (RedisError, RedisClusterException) as exc:
            raise RuntimeError("the private client could not be made") from exc

    monkeypatch.setattr(layer_module, "private_client", undeferred)
    assert _layer_while_the_cluster_hangs(cluster) == ("RuntimeError", None)
