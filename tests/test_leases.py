"""Cross-process single-flight: Redis leases with fencing, alone and under cw.cached."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._redis import RedisLayer
from servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def url(server: RedisServer) -> str:
    server.flushall()
    server.config_set("maxmemory", 0)
    server.config_set("maxmemory-policy", "noeviction")
    return server.url


def make_key(name: str = "k") -> CacheKey:
    return CacheKey(name, "leases:v1", (name,), {}, ("name",))


def entry(value: Any, created: float) -> Entry:
    return Entry(value, created, created + 60, created + 120, created + 180)


# --- the lease primitives ------------------------------------------------------------------------


def test_one_holder_at_a_time_with_increasing_tokens(url: str) -> None:
    a, b = (
        RedisLayer.from_url(url, socket_timeout=1.0),
        RedisLayer.from_url(url, socket_timeout=1.0),
    )  # two "processes"
    key = make_key()
    token = a.acquire_lease(key, ttl=5)
    assert token is not None
    assert token > 0
    assert b.acquire_lease(key, ttl=5) is None
    # A retried acquire by the holder (its first reply was lost) gets its token back.
    assert a.acquire_lease(key, ttl=5) == token
    a.release_lease(key, token)
    second = b.acquire_lease(key, ttl=5)
    assert second is not None
    assert second > token
    a.release_lease(key, token)  # a stale release does not free b's lease
    assert a.acquire_lease(key, ttl=5) is None
    b.release_lease(key, second)
    assert a.events()["leases_lost"] == 1
    assert b.events()["leases_busy"] == 1
    a.close()
    b.close()


def test_an_expired_lease_is_taken_over(url: str) -> None:
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key()
    first = a.acquire_lease(key, ttl=0.05)
    assert first is not None
    time.sleep(0.1)
    second = b.acquire_lease(key, ttl=5)
    assert second is not None
    assert second > first
    a.close()
    b.close()


def test_the_holder_writes_and_a_holder_that_lost_its_lease_cannot_overwrite(
    url: str, server: RedisServer
) -> None:
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key()
    now = time.time()
    old_token = a.acquire_lease(key, ttl=5)
    assert old_token is not None
    # The lease disappears (expired, or evicted: see the eviction test) while a fetches...
    server.command("DEL", a.redis_key(key) + ":lease")
    new_token = b.acquire_lease(key, ttl=5)
    assert new_token is not None
    assert new_token > old_token
    assert b.set_fenced(key, entry("b's value", now + 1), new_token)
    # ...and a finishes *later*, with a later `created`: still refused (older token).
    assert not a.set_fenced(key, entry("a's value", now + 2), old_token)
    assert a.get(key).value == "b's value"  # type: ignore[union-attr]
    assert a.events()["writes_refused"] == 1
    a.close()
    b.close()


def test_a_lost_lease_may_fill_an_empty_key_but_never_replace_a_newer_entry(url: str) -> None:
    a = RedisLayer.from_url(url, socket_timeout=1.0)
    key = make_key()
    now = time.time()
    assert a.set_fenced(key, entry("no holder, empty key", now), 7)
    assert not a.set_fenced(key, entry("older", now - 1), 8)
    assert a.set_fenced(key, entry("newer", now + 1), 8)
    a.close()


def test_leases_and_fenced_writes_async(url: str) -> None:
    async def main() -> None:
        a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
        key = make_key()
        token = await a.aacquire_lease(key, ttl=5)
        assert token is not None
        assert await b.aacquire_lease(key, ttl=5) is None
        assert await a.aset_fenced(key, entry("v", time.time()), token)
        await a.arelease_lease(key, token)
        # The value is fresh: nothing to fetch, so b declines the lease.
        assert await b.aacquire_lease(key, ttl=5) is None
        assert b.events()["leases_declined"] == 1
        assert (await b.aget(key)).value == "v"  # type: ignore[union-attr]
        await a.aclose()
        await b.aclose()

    asyncio.run(main())


def test_under_allkeys_lru_a_lease_is_evicted_and_fencing_still_protects_the_value(
    url: str, server: RedisServer
) -> None:
    server.config_set("maxmemory", "2mb")
    server.config_set("maxmemory-policy", "allkeys-lru")
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key()
    now = time.time()
    old_token = a.acquire_lease(key, ttl=60)
    assert old_token is not None
    lease_key = a.redis_key(key) + ":lease"
    filler = b"x" * 4096
    for i in range(4000):  # up to 16 MB through a 2 MB Redis
        server.command("SET", f"filler:{i}", filler)
        if i % 100 == 99 and server.command("EXISTS", lease_key) == 0:
            break
    assert server.command("EXISTS", lease_key) == 0, "the lease survived allkeys-lru pressure"
    new_token = b.acquire_lease(key, ttl=60)  # a second process takes the same lease
    assert new_token is not None
    assert b.set_fenced(key, entry("second holder", now + 1), new_token)
    assert not a.set_fenced(key, entry("first holder, finishing late", now + 2), old_token)
    assert b.get(key).value == "second holder"  # type: ignore[union-attr]
    a.close()
    b.close()


def test_under_noeviction_the_lease_survives_and_full_memory_is_an_error_not_a_hang(
    url: str, server: RedisServer
) -> None:
    import redis

    server.config_set("maxmemory", "2mb")
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key()
    token = a.acquire_lease(key, ttl=60)
    assert token is not None
    refused = _fill(server, 4000)
    assert "OOM" in refused
    server.config_set("maxmemory", "1mb")  # firmly over the limit, not hovering at it
    assert server.command("EXISTS", a.redis_key(key) + ":lease") == 1
    # The lease still excludes others (saying "busy" writes nothing)...
    assert b.acquire_lease(key, ttl=60) is None
    # ...but writes fail with OOM: an error the driver's breaker counts, a miss for callers.
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        a.set_fenced(key, entry("v", time.time()), token)
    assert a.events()["errors"] == 1
    a.close()
    b.close()


def _fill(server: RedisServer, count: int) -> str:
    """Write up to ``count`` 4 KB values; returns the error that stopped it ("" if none)."""
    filler = b"x" * 4096
    for i in range(count):
        try:
            server.command("SET", f"filler:{i}", filler)
        except RuntimeError as exc:  # noqa: PERF203 - stops at the first error
            return str(exc)
    return ""


# --- leases under cw.cached: one fetch per key across "processes" ---------------------------------


def _guarded(url: str, calls: list[str], **options: Any) -> Any:
    layer = RedisLayer.from_url(url, socket_timeout=1.0)

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="leased", **options)
    def load(name: str) -> dict[str, Any]:
        calls.append(name)
        time.sleep(0.2)
        return {"name": name, "by": threading.get_ident()}

    return load, layer


def test_many_stacks_in_one_process_fetch_a_cold_key_once(url: str) -> None:
    # Four cached functions with their own L1 and their own layer (so their own lease owner id)
    # stand in for four processes; 25 threads call each.
    calls: list[str] = []
    stacks = [_guarded(url, calls) for _ in range(4)]
    barrier = threading.Barrier(100)
    results: list[Any] = []

    def call(fn: Any) -> None:
        barrier.wait()
        results.append(fn("cold"))

    threads = [threading.Thread(target=call, args=(fn,)) for fn, _ in stacks for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == ["cold"]
    assert len(results) == 100
    assert all(r == results[0] for r in results)
    assert sum(fn.stats().lease_waits for fn, _ in stacks) == 3
    for _, layer in stacks:
        layer.close()


def test_a_dead_holders_lease_is_taken_over_by_one_waiter(url: str) -> None:
    calls: list[str] = []
    stacks = [_guarded(url, calls, lease_ttl=15) for _ in range(3)]
    dead = RedisLayer.from_url(url, socket_timeout=1.0)
    key = CacheKey("cold", "leased:v1", ("cold",), {}, ("name",))
    assert dead.acquire_lease(key, ttl=0.5) is not None  # a holder that then dies
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda fn=fn: results.append(fn("cold")))
        for fn, _ in stacks
        for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == ["cold"]  # one waiter took the expired lease over; nobody else fetched
    assert len(results) == 30
    for _, layer in stacks:
        layer.close()
    dead.close()


def test_a_lease_wait_that_times_out_serves_stale_or_raises_and_never_fetches(
    url: str,
) -> None:
    calls: list[str] = []
    load, layer = _guarded(url, calls, timeout=0.3)
    key = CacheKey("held", "leased:v1", ("held",), {}, ("name",))
    holder = RedisLayer.from_url(url, socket_timeout=1.0)
    assert holder.acquire_lease(key, ttl=30) is not None  # alive, but slow
    started = time.monotonic()
    with pytest.raises(cw.FetchTimeout):
        load("held")
    assert time.monotonic() - started < 5  # bounded by timeout (0.3 s), not by the lease
    assert calls == []
    assert load.stats().lease_waits == 1
    layer.close()
    holder.close()


# --- real processes --------------------------------------------------------------------------


def _process_worker(
    url: str, start: Any, counter: Any, results: Any, *, threads: int, use_async: bool
) -> None:
    # 8 interpreters starting at once on a 2-core machine can stall a reply past the default
    # 0.25 s; this test is about leases with Redis up, so it allows 2 s (timeouts are counted
    # and asserted to be zero below).
    layer = RedisLayer.from_url(url, socket_timeout=2.0)

    def backend(name: str) -> dict[str, Any]:
        with counter.get_lock():
            counter.value += 1
        return {"name": name, "pid": os.getpid()}

    if use_async:

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="procs")
        async def aload(name: str) -> dict[str, Any]:
            await asyncio.sleep(0.3)
            return backend(name)

        async def main() -> list[Any]:
            start.wait()
            out = await asyncio.gather(*(aload("cold") for _ in range(threads)))
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:  # the leader stores and releases its lease after serving its callers
                await asyncio.wait(others, timeout=5)
            await layer.aclose()
            return list(out)

        values = asyncio.run(main())
    else:

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="procs")
        def load(name: str) -> dict[str, Any]:
            time.sleep(0.3)
            return backend(name)

        values = []
        gate = threading.Barrier(threads)

        def call() -> None:
            gate.wait()
            values.append(load("cold"))

        start.wait()
        pool = [threading.Thread(target=call) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=60)
    events = layer.events()
    results.put(([v["pid"] for v in values], events))
    layer.close()


def _run_processes(url: str, processes: int, threads: int, *, use_async: bool) -> tuple[int, Any]:
    # forkserver: children fork from a clean server process that has imported the heavy
    # modules once (no fork of this threaded test process, no re-import per child).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["cacheward", "redis", "redis.asyncio", "servers", "test_leases"])
    start = ctx.Barrier(processes)
    counter = ctx.Value("i", 0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_worker,
            args=(url, start, counter, results),
            kwargs={"threads": threads, "use_async": use_async},
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=60) for _ in procs]
    pids = [pids for pids, _ in reports]
    events = [ev for _, ev in reports]
    for proc in procs:
        proc.join(timeout=30)
    assert all(proc.exitcode == 0 for proc in procs)
    assert sum(ev["timeouts"] + ev["errors"] for ev in events) == 0, [
        {k: v for k, v in ev.items() if v} for ev in events
    ]
    return counter.value, pids


def test_8_processes_x_50_threads_on_one_cold_key_call_the_backend_once(url: str) -> None:
    calls, pids = _run_processes(url, 8, 50, use_async=False)
    assert calls == 1
    served = [pid for chunk in pids for pid in chunk]
    assert len(served) == 400
    assert len(set(served)) == 1  # everyone got the one fetching process's value


def test_4_processes_x_50_tasks_on_one_cold_key_call_the_backend_once(url: str) -> None:
    calls, pids = _run_processes(url, 4, 50, use_async=True)
    assert calls == 1
    served = [pid for chunk in pids for pid in chunk]
    assert len(served) == 200
    assert len(set(served)) == 1


def test_without_leases_every_process_fetches(url: str) -> None:
    # The sibling that shows the test above can fail: with cross_process=False each stack
    # fetches once (in-process single-flight only).
    calls: list[str] = []
    stacks = [_guarded(url, calls, cross_process=False) for _ in range(4)]
    barrier = threading.Barrier(40)

    def call(fn: Any) -> None:
        barrier.wait()
        fn("cold")

    threads = [threading.Thread(target=call, args=(fn,)) for fn, _ in stacks for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == ["cold"] * 4
    for _, layer in stacks:
        layer.close()


def test_tokens_keep_growing_when_the_fencing_counter_is_lost(
    url: str, server: RedisServer
) -> None:
    a = RedisLayer.from_url(url, socket_timeout=1.0)
    key = make_key()
    first = a.acquire_lease(key, ttl=5)
    assert first is not None
    a.release_lease(key, first)
    server.command("DEL", a.redis_key(key) + ":fence")  # evicted or expired
    second = a.acquire_lease(key, ttl=5)
    assert second is not None
    assert second > first
    a.close()


def test_no_lease_is_taken_when_a_fresh_value_is_stored(url: str) -> None:
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key()
    token = a.acquire_lease(key, ttl=5)
    assert token is not None
    assert a.set_fenced(key, entry("v", time.time()), token)
    a.release_lease(key, token)
    assert b.acquire_lease(key, ttl=5) is None  # fresh value there: nothing to fetch
    assert b.events()["leases_declined"] == 1
    assert b.events()["leases_released"] == 0  # none was taken, so none to give back
    reply = b.lease(key, ttl=5)  # the same round trip hands over the value
    assert reply.token is None
    assert reply.entry is not None
    assert reply.entry.value == "v"
    assert b.get(key) is not None
    # A stale value does not stop a refresh.
    b.set(key, Entry("stale", time.time() + 1, time.time() - 1, time.time() + 60))
    assert b.acquire_lease(key, ttl=5) is not None
    a.close()
    b.close()


# --- round trips, and leases that nobody can hold ------------------------------------------------


class Opaque:
    """A value no serializer stores (not registered anywhere)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]


class Counting:
    """Counts the commands a layer's synchronous client sends (each one round trip)."""

    def __init__(self, layer: RedisLayer) -> None:
        self.sent: list[str] = []
        client = layer._sync()
        original = client.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            self.sent.append(str(args[0]))
            return original(*args, **options)

        client.execute_command = execute_command


def wait_for(predicate: Any, seconds: float = 2.0) -> None:
    give_up = time.monotonic() + seconds
    while not predicate() and time.monotonic() < give_up:
        time.sleep(0.005)


@pytest.mark.parametrize("cross_process", [True, False])
def test_a_miss_with_memory_and_redis_costs_two_round_trips(url: str, cross_process: bool) -> None:
    layer = RedisLayer.from_url(url, socket_timeout=1.0)
    layer.get(make_key("warm-up"))  # connect and load nothing yet
    _ = RedisLayer  # the scripts get loaded on first use: run each once before counting
    layer.publish(make_key("warm-up"), None, 1, lease_ttl=1)
    layer.lease(make_key("warm-up"), ttl=1)
    counting = Counting(layer)

    @cw.cached(
        ttl=60,
        layers=[cw.MemoryLayer(), layer],
        namespace="trips",
        cross_process=cross_process,
    )
    def load(name: str) -> str:
        return name.upper()

    # The backplane's channel up first: until it is, entries are re-validated, and its
    # subscription empties the memory layer once (what was cached meanwhile may be stale).
    subscriber = layer.subscriber()
    wait_for(lambda: subscriber.up)
    assert subscriber.up
    assert load("a") == "A"
    wait_for(lambda: len(counting.sent) >= 2)
    time.sleep(0.05)  # nothing more arrives
    assert len(counting.sent) == 2, counting.sent
    assert load("a") == "A"  # from memory
    assert len(counting.sent) == 2
    layer.close()


def test_a_lease_key_without_ttl_or_with_garbage_is_taken_over(
    url: str, server: RedisServer
) -> None:
    a = RedisLayer.from_url(url, socket_timeout=1.0)
    for index, planted in enumerate([b"123:someone", b"garbage", b"-5:x", b":"]):
        key = make_key(f"planted{index}")
        server.command("SET", a.redis_key(key) + ":lease", planted)  # no TTL
        token = a.acquire_lease(key, ttl=5)
        assert token is not None, planted
        a.release_lease(key, token)
    a.close()


def test_a_fencing_counter_near_2_to_the_63_does_not_make_every_token_busy(
    url: str, server: RedisServer
) -> None:
    a, b = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key("huge-fence")
    server.command("SET", a.redis_key(key) + ":fence", str(2**63 - 2))
    token = a.acquire_lease(key, ttl=5)
    assert token is not None
    assert 0 < token < 2**53
    assert b.acquire_lease(key, ttl=5) is None  # held by a, not "busy" for everyone
    a.release_lease(key, token)
    assert b.acquire_lease(key, ttl=5) is not None
    a.close()
    b.close()


def test_a_value_that_cannot_be_stored_tells_waiting_processes_no_value_is_coming(
    url: str,
) -> None:
    holder, waiter = (RedisLayer.from_url(url, socket_timeout=1.0) for _ in range(2))
    key = make_key("unstorable")
    token = holder.acquire_lease(key, ttl=5)
    assert token is not None
    assert waiter.lease(key, ttl=5).busy
    now = time.time()
    with pytest.raises(cw.UnstorableValue):  # after releasing: the serializer refuses it
        holder.publish(key, entry(Opaque("v"), now), token, lease_ttl=5)
    assert holder.events()["encode_errors"] == 1
    reply = waiter.lease(key, ttl=5)
    assert not reply.busy  # no value is coming: stop waiting...
    assert reply.token is None  # ...and fetch without a lease
    holder.close()
    waiter.close()


def test_processes_waiting_for_an_unstorable_value_fetch_at_once_not_one_after_another(
    url: str,
) -> None:
    """Issue 14's cross-process case: 3 stacks (3 lease owners) on one cold key whose value
    JSON refuses. Before, each waited for a value that never came, then fetched in turn.
    The two later fetches wait (bounded) for each other: they meet only if they run at once."""
    lock = threading.Condition()
    running = [0]
    first_running = [False]
    peak = [0]  # the most later fetches (all but the first) running at once
    fetches: list[bool] = []  # per fetch after the first: did it meet another one?
    stacks = []
    for _ in range(3):
        layer = RedisLayer.from_url(url, socket_timeout=1.0)

        @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer], namespace="unstorable", wait_timeout=5)
        def load(name: str) -> set[str]:
            with lock:
                first = not fetches and running[0] == 0 and not hasattr(load, "seen")
                load.seen = True  # type: ignore[attr-defined]
                running[0] += 1
                if not first:
                    peak[0] = max(peak[0], running[0] - (1 if first_running[0] else 0))
                lock.notify_all()
                if first:
                    first_running[0] = True
                    lock.wait_for(lambda: False, timeout=0.2)  # the others start waiting
                    first_running[0] = False
                else:
                    fetches.append(lock.wait_for(lambda: peak[0] >= 2, timeout=3.0))
                running[0] -= 1
            return Opaque(name)

        stacks.append((load, layer))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda f=f: results.append(f("k"))) for f, _ in stacks]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # the first stack takes the lease
    for thread in threads:
        thread.join(10)
    assert results == [Opaque("k")] * 3
    assert fetches == [True, True]
    for _, layer in stacks:
        layer.close()


def _holder_whose_breaker_opens_mid_fetch(url: str) -> tuple[RedisLayer, CacheKey, list[str]]:
    holder = RedisLayer.from_url(url, socket_timeout=1.0, breaker_failures=1, breaker_reset=60)
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), holder], namespace="mid-fetch")
    def load(name: str) -> str:
        calls.append(name)
        breaker = holder.breaker
        assert breaker is not None
        with breaker.lock:  # a failure elsewhere opens the layer's breaker meanwhile
            breaker.breaker.record_failure(time.monotonic())
        return name.upper()

    assert load("k") == "K"
    holder.close()  # waits for the background publish
    return holder, CacheKey("k", "mid-fetch:v1", ("k",), {}, ("name",)), calls


def test_a_holder_whose_breaker_opens_mid_fetch_still_publishes_and_releases(url: str) -> None:
    """Issue 15 item 4: release and fenced writes were skipped unless the breaker was closed,
    so another process waited its whole timeout for a value that never came."""
    holder, key, calls = _holder_whose_breaker_opens_mid_fetch(url)
    other = RedisLayer.from_url(url, socket_timeout=1.0)
    found = other.get(key)
    assert found is not None
    assert found.value == "K"
    assert other.acquire_lease(key, ttl=5) is None  # fresh value there: nothing to fetch
    assert holder.events()["leases_released"] == 1
    assert calls == ["k"]
    other.close()


def test_the_mid_fetch_check_catches_a_holder_that_skips_its_publish(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sibling: a breaker that refuses the publish like any write leaves nothing stored."""
    import cacheward._readpath

    original = cacheward._readpath.GuardedLayer.admit
    monkeypatch.setattr(
        cacheward._readpath.GuardedLayer,
        "admit",
        lambda self, mode: original(self, "write" if mode == "lease" else mode),
    )
    _, key, _ = _holder_whose_breaker_opens_mid_fetch(url)
    other = RedisLayer.from_url(url, socket_timeout=1.0)
    assert other.get(key) is None
    other.close()
