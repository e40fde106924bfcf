"""Unit tests of ``cw.cached`` on a fake clock: every rule of the read-through cache."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock, InlineExecutor


class Backend:
    """A scripted backend: counts calls, returns ``(key, n)`` or raises when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error: Exception | None = None

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        self.calls.append(args)
        if self.error is not None:
            raise self.error
        return (*args, len(self.calls))


class ManualExecutor(concurrent.futures.Executor):
    """Holds submitted jobs until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.jobs.append(lambda: fn(*args, **kwargs))
        return concurrent.futures.Future()

    def run_all(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


class Zero(random.Random):
    """An rng whose draws are all 0: no jitter, back-off exactly at its ceiling."""

    def random(self) -> float:
        return 0.0


def make(clock: FakeClock, backend: Backend | None = None, **settings: Any) -> tuple[Any, Backend]:
    backend = backend or Backend()
    settings.setdefault("ttl", 10)
    settings.setdefault("rng", Zero())
    settings.setdefault("refresh_executor", InlineExecutor())

    @cw.cached(clock=clock, **settings)
    def fetch(*args: Any) -> tuple[Any, ...]:
        return backend(*args)

    return fetch, backend


def test_fresh_hit_calls_backend_once() -> None:
    clock = FakeClock()
    fetch, backend = make(clock)
    assert fetch("a") == ("a", 1)
    assert fetch("a") == ("a", 1)
    clock.advance(9.9)
    assert fetch("a") == ("a", 1)
    assert len(backend.calls) == 1
    stats = fetch.stats()
    assert (stats.hits, stats.misses, stats.fetches) == (2, 1, 1)


def test_expired_entry_is_fetched_again() -> None:
    clock = FakeClock()
    fetch, backend = make(clock)
    fetch("a")
    clock.advance(10)
    assert fetch("a") == ("a", 2)
    assert len(backend.calls) == 2


def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    clock = FakeClock()
    executor = ManualExecutor()
    fetch, backend = make(clock, stale_ttl=30, refresh_executor=executor)
    fetch("a")
    clock.advance(15)
    # Within the stale window: the stale value at once, one refresh however many callers.
    assert [fetch("a") for _ in range(5)] == [("a", 1)] * 5
    assert len(executor.jobs) == 1
    assert len(backend.calls) == 1
    executor.run_all()
    assert len(backend.calls) == 2
    assert fetch("a") == ("a", 2)
    stats = fetch.stats()
    assert stats.stale_hits == 5
    assert stats.refreshes == 1


def test_past_the_stale_window_is_a_miss() -> None:
    clock = FakeClock()
    executor = ManualExecutor()
    fetch, backend = make(clock, stale_ttl=30, refresh_executor=executor)
    fetch("a")
    clock.advance(40)
    assert fetch("a") == ("a", 2)  # fetched in the caller, not served stale
    assert executor.jobs == []


def test_async_stale_while_revalidate() -> None:
    clock = FakeClock()
    backend = Backend()

    @cw.cached(ttl=10, stale_ttl=30, clock=clock, rng=Zero())
    async def fetch(key: str) -> tuple[Any, ...]:
        await asyncio.sleep(0)
        return backend(key)

    async def main() -> None:
        await fetch("a")
        clock.advance(15)
        assert await asyncio.gather(*(fetch("a") for _ in range(5))) == [("a", 1)] * 5
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(backend.calls) == 2
        assert await fetch("a") == ("a", 2)

    asyncio.run(main())


def test_stale_if_error_serves_stale_when_the_fetch_fails() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, stale_ttl=0, stale_if_error=100)
    fetch("a")
    clock.advance(50)
    backend.error = ConnectionError("db down")
    assert fetch("a") == ("a", 1)
    assert fetch.stats().stale_on_error == 1
    clock.advance(60)  # 110 s old: past ttl + stale_if_error, and the 1 s back-off is over
    with pytest.raises(ConnectionError):
        fetch("a")
    assert len(backend.calls) == 3


def test_failure_past_every_limit_raises_the_backend_error() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, stale_if_error=5)
    backend.error = ConnectionError("db down")
    with pytest.raises(ConnectionError, match="db down"):
        fetch("a")
    assert fetch.stats().fetch_errors == 1


def test_backoff_blocks_refetch_and_chains_the_failure() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, backoff=2, backoff_max=8)
    backend.error = ConnectionError("db down")
    with pytest.raises(ConnectionError):
        fetch("a")
    with pytest.raises(cw.BackoffActive) as info:
        fetch("a")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.retry_after == pytest.approx(2.0)
    assert "backoff=2.0s" in str(info.value)
    assert len(backend.calls) == 1
    clock.advance(2)
    with pytest.raises(ConnectionError):
        fetch("a")  # second failure: back-off doubles to 4 s
    assert len(backend.calls) == 2
    clock.advance(3.9)
    with pytest.raises(cw.BackoffActive):
        fetch("a")
    clock.advance(0.1)
    backend.error = None
    assert fetch("a") == ("a", 3)
    assert fetch.stats().backoff_rejections == 2


def test_backoff_is_capped_and_keys_are_independent() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, backoff=1, backoff_max=3)
    backend.error = ConnectionError("down")
    for _ in range(5):
        with pytest.raises(ConnectionError):
            fetch("a")
        clock.advance(3)  # the cap: always enough to try again
    assert len(backend.calls) == 5
    with pytest.raises(ConnectionError):
        fetch("b")  # another key is not backing off
    assert len(backend.calls) == 6


def test_backoff_serves_stale_when_there_is_one() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, stale_ttl=100, backoff=5)
    fetch("a")
    clock.advance(20)
    backend.error = ConnectionError("down")
    assert fetch("a") == ("a", 1)  # serves stale; the inline refresh fails and backs off
    assert len(backend.calls) == 2
    assert [fetch("a") for _ in range(3)] == [("a", 1)] * 3
    assert len(backend.calls) == 2  # no refresh during the back-off
    clock.advance(5)
    backend.error = None
    fetch("a")  # back-off over: one refresh
    assert fetch("a") == ("a", 3)


def test_ttl_jitter_spreads_expiry() -> None:
    clock = FakeClock()
    layer = cw.MemoryLayer()
    fetch, _ = make(clock, layers=[layer], jitter=0.2, rng=random.Random(7))
    for i in range(50):
        fetch(f"k{i}")
    lifetimes = {layer.lookup(f"k{i}").fresh_until - clock.time() for i in range(50)}  # type: ignore[union-attr]
    assert all(8.0 <= life <= 10.0 for life in lifetimes)
    # Spread over the window: 50 draws land on about 35 of the 64 steps, from end to end.
    assert len(lifetimes) > 25
    assert max(lifetimes) - min(lifetimes) > 1.5


def test_invalidate_drops_the_key() -> None:
    clock = FakeClock()
    fetch, backend = make(clock)
    fetch("a")
    fetch("b")
    fetch.invalidate("a")
    assert fetch("a") == ("a", 3)
    assert fetch("b") == ("b", 2)
    assert fetch.stats().invalidations == 1


def test_invalidation_during_a_fetch_wins() -> None:
    started, release = threading.Event(), threading.Event()
    calls = []

    @cw.cached(ttl=60)
    def fetch(key: str) -> int:
        calls.append(key)
        if len(calls) == 1:
            started.set()
            release.wait(5)
        return len(calls)

    results: list[int] = []
    leader = threading.Thread(target=lambda: results.append(fetch("a")))
    leader.start()
    assert started.wait(5)
    fetch.invalidate("a")
    release.set()
    leader.join(5)
    assert results == [1]  # the fetch's caller gets its result...
    assert fetch("a") == 2  # ...but it was not cached: the next call fetches again
    assert fetch("a") == 2


def test_keys_keep_types_and_argument_boundaries_apart() -> None:
    clock = FakeClock()
    fetch, backend = make(clock)
    values = [fetch(1), fetch(1.0), fetch(True), fetch("1"), fetch("a b"), fetch("a", "b")]
    assert len(backend.calls) == 6
    assert len({v[-1] for v in values}) == 6
    assert fetch((1,)) != fetch((1.0,))
    assert len(backend.calls) == 8


def test_keyword_and_positional_share_a_key() -> None:
    backend = Backend()

    @cw.cached(ttl=10)
    def fetch(customer: str, region: str = "eu") -> tuple[Any, ...]:
        return backend(customer, region)

    fetch("a")
    fetch(customer="a")
    fetch("a", region="eu")  # defaults are not filled in: a different key
    assert len(backend.calls) == 2


def test_long_arguments_make_a_bounded_key() -> None:
    key = cw.CacheKey(b"x", "ns:v1", ("x" * 100_000,), {}, ("a",))
    assert len(key.text) < 100
    assert key.text.startswith("ns:v1:")


def test_unhashable_argument_fails_naming_it() -> None:
    fetch, backend = make(FakeClock())
    with pytest.raises(cw.ConfigurationTypeError, match=r"argument '#0' is a list"):
        fetch([1, 2])

    @cw.cached(ttl=1)
    def named(customer_ids: list[str]) -> int:
        return 1

    with pytest.raises(TypeError, match=r"'customer_ids' is a list.*tuple"):
        named(["a"])
    assert backend.calls == []


def test_custom_key_function() -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @cw.cached(ttl=10, key=lambda self, customer: customer)
        def config(self, customer: str) -> str:
            self.calls += 1
            return customer.upper()

    service = Service()
    assert service.config("a") == "A"
    assert service.config("a") == "A"
    assert service.calls == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ttl": -1}, "ttl must be >= 0"),
        ({"ttl": 1, "stale_ttl": -5}, "stale_ttl must be >= 0"),
        ({"ttl": "60"}, "ttl must be seconds"),
        ({"ttl": float("nan")}, "ttl must be a finite"),
        ({"ttl": 1, "jitter": 0.9}, "jitter must be between 0 and 0.5"),
        ({"ttl": 1, "backoff": 5, "backoff_max": 1}, "backoff_max"),
        ({"ttl": 1, "timeout": 0}, "timeout must be > 0"),
        ({"ttl": 1, "layers": "memory"}, "layers must be a list"),
        ({"ttl": 1, "layers": [object()]}, r"layers\[0\]"),
        ({"ttl": 1, "clock": object()}, "clock must provide"),
        ({"ttl": 1, "key": 3}, "key must be a callable"),
    ],
)
def test_bad_settings_fail_at_decoration_time(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(cw.ConfigurationError, match=message):
        cw.cached(**settings)


def test_durations_accept_timedelta() -> None:
    clock = FakeClock()
    fetch, backend = make(clock, ttl=timedelta(minutes=1))
    fetch("a")
    clock.advance(timedelta(seconds=59))
    fetch("a")
    assert len(backend.calls) == 1


def test_bad_layer_settings() -> None:
    with pytest.raises(cw.ConfigurationError, match=r"maxsize must be >= 1"):
        cw.MemoryLayer(maxsize=0)
    with pytest.raises(cw.ConfigurationError, match="policy"):
        cw.MemoryLayer(policy="random")  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="must come first"):
        cw.cached(ttl=1, layers=[cw.MemoryLayer(), cw.MemoryLayer()])


def test_a_memory_layer_belongs_to_one_function() -> None:
    layer = cw.MemoryLayer()

    @cw.cached(ttl=1, layers=[layer])
    def one(x: str) -> str:
        return x

    with pytest.raises(cw.ConfigurationError, match="already used by"):

        @cw.cached(ttl=1, layers=[layer])
        def two(x: str) -> str:
            return x


def test_decorating_the_wrong_things_fails_at_decoration() -> None:
    decorator = cw.cached(ttl=1)
    with pytest.raises(cw.ConfigurationTypeError, match="wrap a function"):
        decorator(42)  # type: ignore[call-overload]

    def gen() -> Any:
        yield 1

    with pytest.raises(cw.ConfigurationTypeError, match="generator function"):
        decorator(gen)

    async def agen() -> Any:
        yield 1

    with pytest.raises(cw.ConfigurationTypeError, match="generator function"):
        decorator(agen)


def test_wrapper_preserves_metadata() -> None:
    @cw.cached(ttl=1)
    def documented(x: str) -> str:
        """Docstring."""
        return x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docstring."
    assert documented.__wrapped__ is not None


def test_policies_evict_within_maxsize() -> None:
    for policy in ("fifo", "lru", "lfu"):
        layer = cw.MemoryLayer(maxsize=3, policy=policy)  # type: ignore[arg-type]
        fetch, backend = make(FakeClock(), layers=[layer])
        for i in range(10):
            fetch(i)
        assert len(layer) <= 3
        assert fetch(9) == (9, 10)  # the newest survived
        assert len(backend.calls) == 10


def test_lru_policy_keeps_the_recently_used() -> None:
    layer = cw.MemoryLayer(maxsize=2, policy="lru")
    fetch, backend = make(FakeClock(), layers=[layer])
    fetch("a")
    fetch("b")
    fetch("a")
    fetch("c")  # evicts b, not a
    fetch("a")
    assert len(backend.calls) == 3


def test_fifo_eviction_drops_expired_entries_first() -> None:
    clock = FakeClock()
    layer = cw.MemoryLayer(maxsize=3)
    fetch, backend = make(clock, layers=[layer], ttl=5)
    fetch("old")
    clock.advance(6)
    fetch("x")
    fetch("y")
    fetch("z")  # full: "old" is expired and goes first
    assert layer.lookup("old") is None
    assert all(layer.lookup(k) is not None for k in "xyz")


def test_ttl_zero_is_single_flight_only() -> None:
    fetch, backend = make(FakeClock(), ttl=0)
    fetch("a")
    fetch("a")
    assert len(backend.calls) == 2


def test_sync_waiter_times_out_and_gets_stale_or_an_error() -> None:
    release = threading.Event()
    calls = []

    @cw.cached(ttl=60, wait_timeout=0.05)
    def fetch(key: str) -> int:
        calls.append(key)
        release.wait(5)
        return 1

    leader = threading.Thread(target=fetch, args=("a",))
    leader.start()
    while not calls:
        threading.Event().wait(0.001)
    with pytest.raises(cw.FetchTimeout, match=r"timeout=0\.05s"):
        fetch("a")
    release.set()
    leader.join(5)
    assert fetch.stats().wait_timeouts == 1
    assert len(calls) == 1


def test_async_timeout_serves_stale_if_error_and_keeps_the_fetch() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    calls: list[str] = []

    @cw.cached(ttl=1, stale_if_error=100, wait_timeout=0.05, clock=clock)
    async def fetch(key: str) -> int:
        calls.append(key)
        if len(calls) > 1:
            await gate.wait()
        return len(calls)

    async def main() -> None:
        assert await fetch("a") == 1
        clock.advance(2)
        assert await fetch("a") == 1  # times out, serves the entry usable on error
        gate.set()
        await asyncio.sleep(0.01)
        assert await fetch("a") == 2  # the shared fetch was not cancelled and was stored

    asyncio.run(main())
    assert len(calls) == 2


class FlakyLayer:
    """A shared layer that fails on demand (stands in for a sick Redis)."""

    local = False
    name = "flaky"

    def __init__(self) -> None:
        self.data: dict[str, cw.Entry] = {}
        self.broken = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.broken:
            raise ConnectionError("layer down")

    def get(self, key: cw.CacheKey) -> cw.Entry | None:
        self._check()
        return self.data.get(key.text)

    def set(self, key: cw.CacheKey, entry: cw.Entry) -> None:
        self._check()
        self.data[key.text] = entry

    def delete(self, key: cw.CacheKey) -> None:
        self._check()
        self.data.pop(key.text, None)

    def clear(self) -> None:
        self.data.clear()


def test_shared_layer_hit_backfills_memory() -> None:
    clock = FakeClock()
    shared = FlakyLayer()
    memory = cw.MemoryLayer()
    fetch, backend = make(clock, layers=[memory, shared])
    fetch("a")
    memory.clear()
    assert fetch("a") == ("a", 1)  # from the shared layer
    assert memory.lookup("a") is not None
    assert len(backend.calls) == 1
    assert fetch.stats().hits == 1


def test_a_failing_layer_is_a_miss_and_its_breaker_skips_it() -> None:
    clock = FakeClock()
    shared = FlakyLayer()
    fetch, backend = make(clock, layers=[cw.MemoryLayer(maxsize=1), shared], breaker_reset=5)
    shared.broken = True
    for i in range(10):
        assert fetch(f"k{i}") == (f"k{i}", i + 1)
    stats = fetch.stats()
    assert stats.layer_errors == 3  # breaker_failures=3, then the layer is skipped
    assert stats.layer_skips > 0
    assert shared.calls == 3
    shared.broken = False
    clock.advance(5)
    fetch("fresh-key")  # half-open: one probe, it succeeds, the breaker closes
    assert shared.calls >= 4
    assert "fresh-key" in str(shared.data.keys()) or len(shared.data) == 1


def test_garbage_from_a_layer_is_a_miss() -> None:
    clock = FakeClock()

    class Garbage(FlakyLayer):
        def get(self, key: cw.CacheKey) -> Any:
            return "not an entry"

    fetch, backend = make(clock, layers=[Garbage()])
    assert fetch("a") == ("a", 1)
    assert fetch.stats().layer_errors == 1


def test_async_function_needs_async_layers() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match="lacks aget"):

        @cw.cached(ttl=1, layers=[FlakyLayer()])
        async def fetch(key: str) -> str:
            return key


def test_async_basics_and_invalidate() -> None:
    clock = FakeClock()
    backend = Backend()

    @cw.cached(ttl=10, clock=clock)
    async def fetch(key: str) -> tuple[Any, ...]:
        return backend(key)

    async def main() -> None:
        assert await fetch("a") == ("a", 1)
        assert await fetch("a") == ("a", 1)
        await fetch.invalidate("a")
        assert await fetch("a") == ("a", 2)
        backend.error = ConnectionError("x")
        clock.advance(10)
        with pytest.raises(ConnectionError):
            await fetch("a")
        with pytest.raises(cw.BackoffActive):
            await fetch("a")

    asyncio.run(main())
    assert fetch.stats().hits == 1


def test_single_parameter_wrapper_binds_like_the_function() -> None:
    backend = Backend()

    @cw.cached(ttl=10)
    def fetch(customer: str) -> tuple[Any, ...]:
        return backend(customer)

    assert fetch("a") == fetch(customer="a") == ("a", 1)
    assert fetch(7) == (7, 2)
    assert fetch(2.5) == (2.5, 3)  # neither str nor int: the general path, a typed key
    assert fetch(2.5) == (2.5, 3)
    with pytest.raises(TypeError):
        fetch()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fetch("a", "b")  # type: ignore[call-arg]
    assert len(backend.calls) == 3


@pytest.mark.parametrize("name", ["type", "str", "int", "lookup", "now"])
def test_a_parameter_named_like_a_name_of_the_hot_path_is_served(name: str) -> None:
    """``def f(type)`` once made the hit call its argument (``type(type) is str``)."""
    namespace: dict[str, Any] = {}
    exec(f"def fetch({name}):\n    return ({name}, 'v')", namespace)  # noqa: S102 - the name is the point
    fetch = cw.cached(ttl=10)(namespace["fetch"])

    assert fetch("a") == fetch("a") == ("a", "v")
    assert fetch(7) == (7, "v")
    assert fetch.stats().hits == 1


def test_the_shadowing_guard_is_what_keeps_such_a_parameter_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sibling: without the guard, ``def f(type)`` gets the named wrapper and fails."""
    from cacheward import _hotpath

    monkeypatch.setattr(_hotpath, "_TEMPLATE_NAMES", frozenset())
    namespace: dict[str, Any] = {}
    exec("def fetch(type):\n    return type", namespace)  # noqa: S102 - the name is the point
    fetch = cw.cached(ttl=10)(namespace["fetch"])
    with pytest.raises(TypeError, match="not callable"):
        fetch("a")


def test_positional_only_parameter() -> None:
    @cw.cached(ttl=10)
    def fetch(customer: str, /) -> str:
        return customer * 2

    assert fetch("ab") == "abab"
    with pytest.raises(TypeError):
        fetch(customer="ab")  # type: ignore[call-arg]


def test_zero_argument_function() -> None:
    calls = []

    @cw.cached(ttl=10)
    def settings() -> dict[str, int]:
        calls.append(1)
        return {"a": 1}

    assert settings() == settings() == {"a": 1}
    assert len(calls) == 1


def test_namespace_is_public() -> None:
    @cw.cached(ttl=1, namespace="configs", version=3)
    def fetch(key: str) -> str:
        return key

    assert fetch.namespace == "configs:v3"

    @cw.cached(ttl=1)
    async def afetch(key: str) -> str:
        return key

    assert afetch.namespace.endswith("test_namespace_is_public.<locals>.afetch:v1")


def test_a_shared_layer_has_one_breaker_and_a_conflicting_setting_fails_at_decoration() -> None:
    """Issue 12: a second function's breaker_failures on the same layer was silently ignored."""
    shared = FlakyLayer()

    @cw.cached(ttl=1, layers=[shared], breaker_failures=50)
    def first(x: str) -> str:
        return x

    @cw.cached(ttl=1, layers=[shared])  # leaves it to the layer: fine
    def second(x: str) -> str:
        return x

    @cw.cached(ttl=1, layers=[shared], breaker_failures=50)  # the same setting: fine
    def third(x: str) -> str:
        return x

    with pytest.raises(cw.ConfigurationError, match=r"breaker_failures=50.*asks for"):

        @cw.cached(ttl=1, layers=[shared], breaker_failures=3)
        def fourth(x: str) -> str:
            return x

    assert first("a") == second("a") == third("a") == "a"


def test_a_redis_layer_owns_its_breaker_settings() -> None:
    layer = cw.RedisLayer.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.05, breaker_failures=7, breaker_reset=2
    )
    assert layer.breaker is not None
    assert (layer.breaker.failures, layer.breaker.reset) == (7, 2.0)
    with pytest.raises(cw.ConfigurationError, match="configure it once, on the layer"):
        cw.cached(ttl=1, layers=[layer], breaker_reset=5, namespace="a")(lambda x: x)
    assert cw.cached(ttl=1, layers=[layer], breaker_failures=7, namespace="b")(lambda x: x)


def remembered_texts_case(clock: FakeClock) -> list[tuple[Any, ...]]:
    """Calls whose local keys are equal-looking but typed apart, through a shared layer only,
    each made twice (the second time the driver has remembered its text key)."""
    shared = FlakyLayer()
    fetch, _ = make(clock, layers=[shared])
    calls: list[tuple[Any, ...]] = [(1,), ("1",), (1, "a"), ("1", "a"), (1.0,), (True,)]
    return [fetch(*args) for args in calls + calls]


def test_remembered_text_keys_keep_typed_keys_apart() -> None:
    answers = remembered_texts_case(FakeClock())
    first, second = answers[:6], answers[6:]
    assert [a[:-1] for a in first] == [(1,), ("1",), (1, "a"), ("1", "a"), (1.0,), (True,)]
    assert second == first  # served from the shared layer, each its own value
    assert len({a[-1] for a in first}) == 6


def test_a_text_memo_keyed_loosely_would_mix_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sibling that can fail: remembered by str(local), f(1) and f("1") share a text.
    from cacheward import _readpath

    class Loose(dict[Any, str]):
        def get(self, local: Any, default: Any = None) -> Any:
            return super().get(str(local), default)

        def __setitem__(self, local: Any, text: str) -> None:
            super().__setitem__(str(local), text)

    original = _readpath.Driver.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.texts = Loose()

    monkeypatch.setattr(_readpath.Driver, "__init__", init)
    answers = remembered_texts_case(FakeClock())
    assert answers[7] == answers[6] == answers[0]  # f("1") got f(1)'s value


def test_the_text_memo_is_bounded() -> None:
    from cacheward import _readpath

    shared = FlakyLayer()
    fetch, _ = make(FakeClock(), layers=[shared])
    texts = fetch.stats.__self__.texts  # the driver's memo
    for i in range(_readpath.TEXTS_KEPT + 10):
        fetch(i)
        assert len(texts) <= _readpath.TEXTS_KEPT
    assert len(shared.data) == _readpath.TEXTS_KEPT + 10
    assert fetch(0)[0] == 0  # an entry whose text was forgotten is still found
