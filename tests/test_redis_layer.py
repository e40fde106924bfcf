"""RedisLayer on a real redis-server: keys, TTLs, bad bytes, client checks, L1+L2 stacks."""

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
from cacheward._serialize import JsonSerializer, PickleSerializer, encode_entry
from servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def url(server: RedisServer) -> str:
    server.flushall()
    return server.url


def make_key(*args: Any, namespace: str = "tests:v1:fn") -> CacheKey:
    return CacheKey(args, namespace, args, {}, ("a", "b", "c"))


def entry(value: Any, *, ttl: float = 10.0, created: float | None = None) -> Entry:
    now = time.time() if created is None else created
    return Entry(value, now, now + ttl, now + 2 * ttl, now + 3 * ttl)


def test_round_trip_sync_and_async(url: str, server: RedisServer) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, namespace="svc")
    key = make_key("a")
    assert layer.get(key) is None
    stored = entry({"x": [1, 2]})
    layer.set(key, stored)
    assert layer.get(key) == stored

    async def main() -> None:
        assert await layer.aget(key) == stored
        other = make_key("b")
        await layer.aset(other, stored)
        assert await layer.aget(other) == stored
        await layer.adelete(other)
        assert await layer.aget(other) is None
        await layer.aclose()

    asyncio.run(main())
    layer.delete(key)
    assert layer.get(key) is None
    events = layer.events()
    assert events["hits"] == 3
    assert events["misses"] == 3
    assert events["writes"] == 2
    layer.close()


def test_key_layout_ttl_and_hash_slots(url: str, server: RedisServer) -> None:
    from redis.crc import key_slot

    layer = RedisLayer.from_url(url, socket_timeout=1.0, prefix="app", namespace="svc", version=3)
    key = make_key("a")
    redis_key = layer.redis_key(key)
    assert redis_key == f"app:svc:v3:{{{key.text}}}"
    slots = {key_slot(k.encode()) for k in (redis_key, redis_key + ":lease", redis_key + ":fence")}
    assert len(slots) == 1
    stored = entry(1, ttl=10.0)
    layer.set(key, stored)
    pttl = server.command("PTTL", redis_key)
    # Redis keeps the entry until error_until (30 s from now), not just until it goes stale.
    assert 29_000 <= pttl <= 30_000
    layer.close()


def test_expired_entries_are_not_written(url: str, server: RedisServer) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0)
    now = time.time()
    layer.set(make_key("old"), Entry(1, now - 100, now - 90, now - 80, now - 70))
    assert server.command("DBSIZE") == 0
    layer.close()


def test_version_and_namespace_separate_entries(url: str) -> None:
    v1 = RedisLayer.from_url(url, socket_timeout=1.0, namespace="svc", version=1)
    v2 = RedisLayer.from_url(url, socket_timeout=1.0, namespace="svc", version=2)
    other = RedisLayer.from_url(url, socket_timeout=1.0, namespace="other", version=1)
    key = make_key("a")
    v1.set(key, entry("shape 1"))
    assert v2.get(key) is None
    assert other.get(key) is None
    v2.set(key, entry("shape 2"))
    assert v1.get(key).value == "shape 1"  # type: ignore[union-attr]
    v2.clear()
    assert v2.get(key) is None
    assert v1.get(key) is not None
    for layer in (v1, v2, other):
        layer.close()


def test_a_write_never_replaces_a_newer_entry(url: str) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0)
    key = make_key("a")
    now = time.time()
    newer = entry("newer", created=now + 1)
    layer.set(key, newer)
    layer.set(key, entry("older", created=now))
    assert layer.get(key) == newer
    assert layer.events()["writes_refused"] == 1
    layer.close()


def test_values_the_serializer_refuses_are_counted_not_raised(url: str) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, serializer=JsonSerializer())
    key = make_key("a")
    # A tuple would come back from JSON as a list: refused with UnstorableValue (which the
    # cached function counts; the breaker ignores it).
    with pytest.raises(cw.UnstorableValue):
        layer.set(key, entry((1, 2)))
    assert layer.get(key) is None
    assert layer.events()["encode_errors"] == 1
    layer.close()


def test_bad_bytes_in_redis_are_a_counted_miss(url: str, server: RedisServer) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, serializer=JsonSerializer())
    key, other = make_key("a"), make_key("b")
    redis_key = layer.redis_key(key)
    good = encode_entry(entry({"v": 1}), redis_key, JsonSerializer())
    cases = {
        "payload_truncated": good[:20],
        "payload_corrupt": good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:],
        "payload_foreign": b"\x80\x04\x95" + b"x" * 60,  # e.g. some other library's pickle
        "payload_wrong_key": encode_entry(
            entry({"v": 2}), layer.redis_key(other), JsonSerializer()
        ),
    }
    for event, data in cases.items():
        server.command("SET", redis_key, data)
        assert layer.get(key) is None, event
        assert layer.events()[event] == 1, event
    layer.close()


EXECUTED: list[str] = []


def _record(tag: str) -> None:
    EXECUTED.append(tag)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("pwned",))


def test_a_value_forged_into_redis_with_a_wrong_signature_is_a_miss_never_executed(
    url: str, server: RedisServer
) -> None:
    EXECUTED.clear()
    secret = b"s" * 32
    layer = RedisLayer.from_url(url, socket_timeout=1.0, serializer=PickleSerializer(key=secret))
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[layer], namespace="forged")
    def load(name: str) -> dict[str, str]:
        calls.append(name)
        return {"name": name}

    key = CacheKey("c1", "forged:v1", ("c1",), {}, ("name",))
    forged = encode_entry(entry(Exploit()), key.text, PickleSerializer(key=b"attacker" * 4))
    server.command("SET", layer.redis_key(key), forged)
    assert load("c1") == {"name": "c1"}
    assert calls == ["c1"]
    assert EXECUTED == []
    # Refused twice: by the plain read (no memory layer: reads come first), then by the
    # miss's lease script, which reads the key again in the round trip that takes the lease.
    assert layer.events()["payload_tampered"] == 2
    layer.close()  # waits for the write, which runs after the caller was answered
    # The honest value replaced the forged one (it was written later).
    assert (
        RedisLayer.from_url(url, socket_timeout=1.0, serializer=PickleSerializer(key=secret)).get(
            key
        )
        is not None
    )


def test_pool_exhaustion_is_a_miss_not_an_error_or_a_wait(url: str) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, max_connections=1)
    key = make_key("a")
    layer.set(key, entry(1))
    pool = layer._sync().connection_pool
    held = pool.get_connection()
    try:
        started = time.monotonic()
        assert layer.get(key) is None
        assert layer.set_fenced(key, entry(2), 0) is False
        assert time.monotonic() - started < 1.0
    finally:
        pool.release(held)
    assert layer.events()["pool_exhausted"] == 2
    assert layer.get(key) is not None
    layer.close()


def test_redis_errors_raise_so_the_breaker_sees_them(server: RedisServer) -> None:
    import redis

    with RedisServer.started() as doomed:
        layer = RedisLayer.from_url(doomed.url, socket_timeout=0.2)
        key = make_key("a")
        layer.set(key, entry(1))
        doomed.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                layer.get(key)
        finally:
            doomed.resume()
        doomed.stop()
        with pytest.raises(redis.ConnectionError):
            layer.get(key)
        assert layer.events()["timeouts"] == 1
        assert layer.events()["errors"] == 1
        layer.close()


# --- client checks ---------------------------------------------------------------------------


def test_a_client_without_timeouts_is_refused_with_the_fix(server: RedisServer) -> None:
    import redis

    with pytest.raises(cw.ConfigurationError, match=r"socket_timeout.*RedisLayer\.from_url"):
        RedisLayer(redis.Redis(port=server.port, socket_timeout=None))
    with pytest.raises(cw.ConfigurationError, match="decode_responses"):
        RedisLayer(
            redis.Redis(
                port=server.port,
                socket_timeout=0.2,
                socket_connect_timeout=0.2,
                decode_responses=True,
            )
        )
    with pytest.raises(cw.ConfigurationTypeError, match="redis-py client"):
        RedisLayer(object())


def test_a_slow_client_draws_a_warning_a_retrying_one_none(server: RedisServer) -> None:
    """A long timeout is the layer's bound, so it is worth a warning; a retry policy is not
    (the layer talks through a private client without retries: tests/test_redis_deadlines.py)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with pytest.warns(RuntimeWarning, match=r"socket_timeout is 5 s"):
        RedisLayer(redis.Redis(port=server.port))  # redis-py's defaults
    # redis-py's default retry policy: no warning (filterwarnings=error would fail the test).
    RedisLayer(redis.Redis(port=server.port, socket_timeout=0.2, socket_connect_timeout=0.2))
    client = redis.Redis(
        port=server.port,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    layer = RedisLayer(client)  # no warning: filterwarnings=error would fail the test
    key = make_key("a")
    layer.set(key, entry(1))
    assert layer.get(key) is not None
    with pytest.raises(cw.ConfigurationError, match="synchronous Redis client"):
        asyncio.run(layer.aget(key))
    client.close()


def test_an_asyncio_client_serves_async_functions_only(server: RedisServer) -> None:
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    async def main() -> None:
        client = redis.asyncio.Redis(
            port=server.port,
            socket_timeout=0.2,
            socket_connect_timeout=0.2,
            retry=Retry(NoBackoff(), 0),
        )
        layer = RedisLayer(client)
        key = make_key("a")
        await layer.aset(key, entry(1))
        assert await layer.aget(key) is not None
        with pytest.raises(cw.ConfigurationError, match="asyncio Redis client"):
            layer.get(key)
        await layer.aclose()  # the layer's own connections (closing the client does not)
        await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a{b"}, "braces"),
        ({"namespace": "x y"}, "whitespace"),
        ({"version": -1}, "version"),
        ({"timeout": 0}, "timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"serializer": object()}, "serializer"),
    ],
)
def test_settings_are_validated_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(cw.ConfigurationError, match=match):
        RedisLayer.from_url("redis://127.0.0.1:1/0", **kwargs)


def test_repr_shows_the_settings() -> None:
    layer = RedisLayer.from_url("redis://127.0.0.1:1/0", namespace="svc")
    assert "svc" in repr(layer)
    assert "MsgpackSerializer" in repr(layer)


# --- stacks: MemoryLayer + RedisLayer under cw.cached -----------------------------------------


def test_l1_l2_stack_shares_values_between_processes(url: str) -> None:
    calls: list[str] = []

    def make() -> Any:
        layer = RedisLayer.from_url(url, socket_timeout=1.0, namespace="stack")

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="load")
        def load(name: str) -> dict[str, str]:
            calls.append(name)
            return {"name": name}

        return load, layer

    first, first_layer = make()
    second, second_layer = make()  # another "process": its own L1, the same Redis
    assert first("c1") == {"name": "c1"}
    assert second("c1") == {"name": "c1"}  # an L2 hit, backfilled into second's L1
    assert second("c1") == {"name": "c1"}  # an L1 hit
    assert calls == ["c1"]
    assert second_layer.events()["hits"] == 1
    # first's write runs in the background: Redis holds it (second hit it) a moment before
    # first's thread has counted it.
    give_up = time.monotonic() + 2.0
    while first_layer.stats().writes < 1 and time.monotonic() < give_up:
        time.sleep(0.005)
    assert first_layer.events()["writes"] == 1
    first.invalidate("c1")
    assert second_layer.get(CacheKey("c1", "load:v1", ("c1",), {}, ("name",))) is None
    first_layer.close()
    second_layer.close()


async def drain() -> None:
    """Wait for the driver's background tasks (stores, lease releases) on this loop."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=5)


def test_l1_l2_stack_async(url: str) -> None:
    calls: list[str] = []

    async def main() -> None:
        layer = RedisLayer.from_url(url, socket_timeout=1.0, namespace="stack-async")

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="aload")
        async def aload(name: str) -> dict[str, str]:
            calls.append(name)
            await asyncio.sleep(0.05)
            return {"name": name}

        results = await asyncio.gather(*(aload("c1") for _ in range(50)))
        assert all(r == {"name": "c1"} for r in results)
        other = RedisLayer.from_url(url, socket_timeout=1.0, namespace="stack-async")

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), other], namespace="aload")
        async def aload2(name: str) -> dict[str, str]:
            calls.append(name)
            return {"name": name}

        assert await aload2("c1") == {"name": "c1"}
        await drain()  # the leader stores in the background after serving its callers
        assert layer.events()["writes"] == 1  # once, not once per coalesced waiter
        await layer.aclose()
        await other.aclose()

    asyncio.run(main())
    assert calls == ["c1"]


def test_threads_share_one_layer_safely(url: str) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0, max_connections=8)
    keys = [make_key(i) for i in range(20)]
    for i, key in enumerate(keys):
        layer.set(key, entry(i))
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for i, key in enumerate(keys * 5):
                found = layer.get(key)
                assert found is None or found.value == i % 20
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    events = layer.events()
    assert events["hits"] + events["pool_exhausted"] == 16 * 100
    layer.close()


# --- the stall guard's rule, on a fake clock -------------------------------------------------


def test_stall_guard_rule() -> None:
    from cacheward._redis import _Stall
    from cacheward.testing import FakeClock

    clock = FakeClock()
    stall = _Stall(0.025, clock.monotonic)
    verdict: list[bool | None] = [None]
    stall.probe = lambda: verdict[0]
    assert stall.begin()  # nothing outstanding: go
    clock.advance(0.02)
    assert stall.begin()  # outstanding for 20 ms: not yet a stall
    clock.advance(0.01)
    # 30 ms of silence, the probe cannot tell: reads miss, writes and leases still go out.
    assert not stall.begin()
    assert stall.begin(read=False)
    verdict[0] = False  # replies are waiting unread: this process is slow, Redis is not
    assert stall.begin()
    verdict[0] = True  # confirmed silent: reads refused; writes only after twice the silence
    assert not stall.begin()
    assert stall.begin(read=False)
    clock.advance(0.03)
    assert not stall.begin(read=False)
    stall.end(replied=False)  # the command timed out: the next one goes out as a probe
    assert stall.begin()
    stall.end(replied=True)
    clock.advance(0.1)
    assert stall.begin()  # a reply came back: healthy again
    clock.advance(2.0)
    assert stall.begin()  # a mark left far too long is not trusted


@pytest.mark.parametrize("cross_process", [True, False])
def test_a_wrong_typed_key_is_a_miss_for_that_key_not_a_sick_layer(
    url: str, server: RedisServer, cross_process: bool
) -> None:
    """Issue 15 item 13: a LIST at one value key (WRONGTYPE) opened the breaker for the whole
    layer. It is a miss for that key; the layer keeps serving the others."""
    layer = RedisLayer.from_url(url, socket_timeout=1.0)
    calls: list[str] = []

    @cw.cached(
        ttl=60,
        layers=[layer],
        namespace="wrongtype",
        breaker_failures=1,
        cross_process=cross_process,
    )
    def load(name: str) -> str:
        calls.append(name)
        return name.upper()

    good = CacheKey("good", "wrongtype:v1", ("good",), {}, ("name",))
    bad = CacheKey("bad", "wrongtype:v1", ("bad",), {}, ("name",))
    layer.set(good, entry("GOOD"))
    server.command("RPUSH", layer.redis_key(bad), "not", "an", "entry")
    assert load("bad") == "BAD"  # a miss, never an error (the write then replaces the list)
    assert load("good") == "GOOD"  # still read from Redis: the breaker did not open
    assert "good" not in calls
    stats = load.stats()
    assert stats.layer_errors == 0
    assert stats.layer_skips == 0
    assert layer.events()["key_errors"] >= 1
    layer.close()


def test_the_wrong_type_check_catches_a_layer_that_calls_every_error_sickness(
    url: str, server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sibling: with every fault counted as sickness, the same key opens the breaker."""
    import cacheward._redis

    monkeypatch.setattr(cacheward._redis, "sick", lambda fault: True)
    layer = RedisLayer.from_url(url, socket_timeout=1.0)

    @cw.cached(ttl=60, layers=[layer], namespace="wrongtype2", breaker_failures=1)
    def load(name: str) -> str:
        return name.upper()

    bad = CacheKey("bad", "wrongtype2:v1", ("bad",), {}, ("name",))
    server.command("RPUSH", layer.redis_key(bad), "x")
    assert load("bad") == "BAD"
    assert load.stats().layer_errors >= 1
    layer.close()


def test_errors_are_classified_once_for_the_layer_and_the_bucket() -> None:
    import redis

    from cacheward._rediskit import Fault, classify, sick

    wrongtype = redis.ResponseError(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    cases = {
        wrongtype: Fault.KEY,
        redis.ConnectionError("Error 111 connecting"): Fault.UNREACHABLE,
        redis.TimeoutError("Timeout reading"): Fault.UNREACHABLE,
        redis.ResponseError("LOADING Redis is loading the dataset"): Fault.UNREACHABLE,
        redis.exceptions.MaxConnectionsError("Too many connections"): Fault.POOL_FULL,
        redis.exceptions.NoScriptError("NOSCRIPT No matching script"): Fault.NOSCRIPT,
        redis.AuthenticationError("invalid password"): Fault.OTHER,
        redis.ResponseError("NOPERM this user has no permissions"): Fault.OTHER,
    }
    for exc, fault in cases.items():
        assert classify(exc) is fault, exc
    assert not sick(Fault.KEY)
    assert not sick(Fault.POOL_FULL)
    assert sick(Fault.UNREACHABLE)


def test_without_a_memory_layer_nothing_read_from_redis_is_kept_in_the_process(
    url: str, server: RedisServer
) -> None:
    """A regression test: an entry read back from Redis was kept like a pending write (an
    unbounded in-process cache that ignored deletions in Redis)."""
    layer = RedisLayer.from_url(url, socket_timeout=1.0)
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[layer], namespace="nol1")
    def load(name: str) -> str:
        calls.append(name)
        return name.upper()

    key = CacheKey("a", "nol1:v1", ("a",), {}, ("name",))
    layer.set(key, entry("from redis"))
    assert load("a") == "from redis"
    server.command("DEL", layer.redis_key(key))
    assert load("a") == "A"  # read Redis again, found nothing, fetched
    assert calls == ["a"]
    layer.close()
