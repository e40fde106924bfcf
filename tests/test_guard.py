"""``guard()``: the composition order, stale on refusal, one ``.stats()``, and the promise's
attempt bound with every cache layer failing and 1,000 concurrent callers (fake clock)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import random
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward.testing import FakeClock, InlineExecutor


class BrokenLayer:
    """A remote layer that fails every operation (Redis down)."""

    name = "broken"
    local = False

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> Any:
        self.calls += 1
        raise ConnectionError("layer down")

    def get(self, key: CacheKey) -> Entry | None:
        return self._fail()  # type: ignore[no-any-return]

    def set(self, key: CacheKey, entry: Entry) -> None:
        self._fail()

    def delete(self, key: CacheKey) -> None:
        self._fail()

    def clear(self) -> None:
        self._fail()

    async def aget(self, key: CacheKey) -> Entry | None:
        return self._fail()  # type: ignore[no-any-return]

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        self._fail()

    async def adelete(self, key: CacheKey) -> None:
        self._fail()

    async def aclear(self) -> None:
        self._fail()


class VirtualClock(FakeClock):
    """A fake clock whose ``asleep`` waits for virtual time, so tasks interleave as in real time.

    :func:`run_virtual` runs a coroutine on it: whenever the runnable tasks have had their turn,
    time jumps to the next sleeper's wake-up.
    """

    def __init__(self) -> None:
        super().__init__(monotonic_start=0.0)
        self.timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.seq = itertools.count()

    async def asleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = self.monotonic() + max(0.0, seconds)
        heapq.heappush(self.timers, (due, next(self.seq), future))
        await future


def run_virtual(clock: VirtualClock, main: Coroutine[Any, Any, None]) -> None:
    async def drive() -> None:
        task = asyncio.ensure_future(main)
        for _ in range(1_000_000):
            if task.done():
                break
            for _ in range(20):  # let every runnable task take its turn at this instant
                await asyncio.sleep(0)
            if clock.timers:
                due = clock.timers[0][0]
                clock.advance(max(0.0, due - clock.monotonic()))
                while clock.timers and clock.timers[0][0] <= clock.monotonic():
                    future = heapq.heappop(clock.timers)[2]
                    if not future.done():
                        future.set_result(None)
        task.result()

    asyncio.run(drive())


def window_excess(times: list[float], *, rate: float, burst: float) -> float:
    """max over windows [t_i, t_j] of attempts - (burst + rate * (t_j - t_i))."""
    times = sorted(times)
    worst = float("-inf")
    j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        # Attempts within [start, t_j]: check every j (the bound grows with the window).
        for k in range(i, len(times)):
            worst = max(worst, (k - i + 1) - (burst + rate * (times[k] - start)))
    return worst


def test_a_hit_takes_no_token_and_a_miss_takes_one() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=5, clock=clock)
    calls: list[str] = []

    @cw.guard(ttl=60, limiter=bucket, clock=clock)
    def load(key: str) -> str:
        calls.append(key)
        return key.upper()

    assert [load("a") for _ in range(100)] == ["A"] * 100
    assert calls == ["a"]
    assert bucket.taken == 1
    stats = load.stats()
    assert isinstance(stats, cw.GuardStats)
    assert (stats.cache.hits, stats.cache.misses, stats.attempts) == (99, 1, 1)
    assert stats.breaker_state == "closed"


def test_each_retry_attempt_takes_a_token_and_counts() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=10, clock=clock)
    failures = [ConnectionError("a"), TimeoutError("b")]

    @cw.guard(ttl=60, limiter=bucket, attempts=3, clock=clock, rng=random.Random(0))
    def load(key: str) -> str:
        if failures:
            raise failures.pop(0)
        return key

    assert load("k") == "k"
    assert bucket.taken == 3
    stats = load.stats()
    assert (stats.attempts, stats.retries, stats.cache.fetches) == (3, 2, 1)


def seeded(clock: FakeClock, **options: Any) -> tuple[Any, list[str], dict[str, Any]]:
    """A guarded loader with an entry for "k" that is past ttl but usable on error."""
    state: dict[str, Any] = {"fail": False}
    calls: list[str] = []

    @cw.guard(ttl=10, stale_if_error=600, clock=clock, backoff=1, **options)
    def load(key: str) -> str:
        calls.append(key)
        if state["fail"]:
            raise ConnectionError("backend down")
        return f"{key}@{clock.monotonic():g}"

    first = load("k")
    clock.advance(11)  # past ttl (and stale_ttl=0): the next call must fetch
    state["first"] = first
    return load, calls, state


def test_stale_is_served_when_the_limiter_says_no() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)
    load, calls, state = seeded(clock, limiter=bucket, max_wait=0.1)
    assert load("k") == state["first"]  # no token: served the old value
    assert len(calls) == 1
    stats = load.stats()
    assert stats.rate_limited == 1
    assert stats.cache.stale_on_error == 1


def test_stale_is_served_when_the_budget_says_no() -> None:
    clock = FakeClock()
    budget = cw.RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    load, calls, state = seeded(clock, budget=budget, attempts=5)
    state["fail"] = True
    assert load("k") == state["first"]
    assert len(calls) == 2  # the first fetch, then one attempt: no retry in the budget
    assert load.stats().budget_exhausted == 1


def test_stale_is_served_when_the_breaker_says_no() -> None:
    clock = FakeClock()
    breaker = cw.CircuitBreaker(failures=1, reset=60, clock=clock)
    load, calls, state = seeded(clock, breaker=breaker, attempts=1)
    state["fail"] = True
    assert load("k") == state["first"]  # the attempt fails and opens the breaker
    clock.advance(5)  # past the key's back-off, breaker still open
    assert load("k") == state["first"]
    assert len(calls) == 2  # the breaker kept the backend out of the second fetch
    stats = load.stats()
    assert stats.circuit_open == 1
    assert stats.breaker_state == "open"


def test_refusal_without_stale_data_is_a_clear_error() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)

    @cw.guard(ttl=10, limiter=bucket, max_wait=0, clock=clock)
    def load(key: str) -> str:
        return key

    assert load("a") == "a"
    with pytest.raises(cw.RateLimited):
        load("b")
    with pytest.raises(cw.BackoffActive):
        load("b")  # the key now backs off instead of asking the bucket again


def test_guard_keeps_signatures_and_async_works() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=10, burst=10, clock=clock)

    async def source(key: str, *, scale: int = 1) -> int:
        return len(key) * scale

    load = cw.guard(ttl=60, limiter=bucket, clock=clock)(source)
    assert inspect.iscoroutinefunction(load)
    assert load.__wrapped__ is source
    assert inspect.signature(load) == inspect.signature(source)

    async def main() -> list[int]:
        return [await load("abc"), await load("abc"), await load("ab", scale=3)]

    assert asyncio.run(main()) == [3, 3, 6]
    assert bucket.taken == 2
    assert load.stats().cache.hits == 1


def test_guard_validates_at_decoration_time() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match="limiter"):
        cw.guard(ttl=1, limiter=object())  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationTypeError, match="breaker"):
        cw.guard(ttl=1, breaker=object())  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="attempts"):
        cw.guard(ttl=1, attempts=0)(lambda: 1)
    with pytest.raises(cw.ConfigurationError, match="timeout"):
        cw.guard(ttl=1, wait_timeout=0)
    with pytest.raises(cw.ConfigurationError, match="max_wait"):
        cw.guard(ttl=1, max_wait=-1)(lambda: 1)


def test_defaults_are_bounded() -> None:
    def source(key: str) -> str:
        return key

    load = cw.guard(ttl=1)(source)
    bucket = load.limiter
    assert isinstance(bucket, cw.TokenBucket)
    assert (bucket.rate, bucket.burst) == (100.0, 100.0)
    assert isinstance(load.breaker, cw.CircuitBreaker)


RATE, BURST = 20.0, 10.0


def test_thousand_async_callers_over_many_keys_with_every_layer_failing() -> None:
    clock = VirtualClock()
    bucket = cw.TokenBucket(rate=RATE, burst=BURST, clock=clock)
    budget = cw.RetryBudget(ratio=0.2, min_per_second=1, window=10, clock=clock)
    layer = BrokenLayer()
    attempts: list[float] = []
    rng = random.Random(3)

    @cw.guard(ttl=5, stale_ttl=30, layers=[layer], limiter=bucket, budget=budget, clock=clock,
              rng=random.Random(4), max_wait=0.2, wait_timeout=2, backoff=0.5,
              backoff_max=2)  # fmt: skip
    async def load(key: int) -> int:
        attempts.append(clock.monotonic())
        await clock.asleep(0.02)  # the backend takes 20 ms
        if rng.random() < 0.5:
            raise ConnectionError("backend struggling")
        return key

    served = 0

    async def caller(i: int) -> None:
        nonlocal served
        await clock.asleep(rng.random() * 0.5)
        for round_ in range(5):
            try:
                await load((i * 7 + round_) % 400)
                served += 1
            except (cw.CacheWardError, ConnectionError):
                pass
            await clock.asleep(rng.random())

    async def main() -> None:
        await asyncio.gather(*(caller(i) for i in range(1000)))

    run_virtual(clock, main())
    span = max(attempts) - min(attempts)
    assert span < 10  # 5,000 calls within a few virtual seconds: a real storm
    assert layer.calls > 0  # the layer really was tried, and failed
    assert len(attempts) > BURST + RATE * span * 0.5  # the bucket was the bottleneck
    assert window_excess(attempts, rate=RATE, burst=BURST) <= 1e-6
    stats = load.stats()
    assert stats.attempts == len(attempts)
    assert stats.cache.layer_errors + stats.cache.layer_skips > 0
    assert stats.rate_limited > 0  # the limiter, not luck, held the line
    assert served > 0


def test_sibling_without_a_limiter_the_same_load_breaks_the_bound() -> None:
    clock = FakeClock(monotonic_start=0.0)
    unlimited = cw.TokenBucket(rate=1e9, burst=1e9, clock=clock)
    attempts: list[float] = []

    @cw.guard(ttl=5, layers=[BrokenLayer()], limiter=unlimited, clock=clock)
    async def load(key: int) -> int:
        attempts.append(clock.monotonic())
        return key

    async def main() -> None:
        await asyncio.gather(*(load(i % 300) for i in range(1000)))

    asyncio.run(main())
    assert window_excess(attempts, rate=RATE, burst=BURST) > 1e-6


def test_threads_with_every_layer_failing_stay_within_the_bound() -> None:
    clock = FakeClock(monotonic_start=0.0)
    bucket = cw.TokenBucket(rate=RATE, burst=BURST, clock=clock)
    attempts: list[float] = []
    lock = threading.Lock()

    @cw.guard(ttl=5, layers=[BrokenLayer()], limiter=bucket, clock=clock, max_wait=0.1,
              refresh_executor=InlineExecutor())  # fmt: skip
    def load(key: int) -> int:
        with lock:
            attempts.append(clock.monotonic())
        return key

    def worker(n: int) -> None:
        for i in range(100):
            with contextlib.suppress(cw.CacheWardError):
                load((n * 100 + i) % 500)
            clock.advance(0.001)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(attempts) > BURST
    assert window_excess(attempts, rate=RATE, burst=BURST) <= 1e-6


def test_coalesced_callers_are_one_request_to_the_budget_and_the_bucket() -> None:
    clock = VirtualClock()
    bucket = cw.TokenBucket(rate=100, burst=100, clock=clock)
    budget = cw.RetryBudget(ratio=0.2, min_per_second=10, clock=clock)
    attempts = 0

    @cw.guard(ttl=60, limiter=bucket, budget=budget, attempts=3, clock=clock,
              rng=random.Random(0))  # fmt: skip
    async def load(key: str) -> str:
        nonlocal attempts
        attempts += 1
        await clock.asleep(0.05)
        if attempts < 3:
            raise ConnectionError("flaky")
        return key

    results: list[str] = []

    async def main() -> None:
        async def one() -> None:
            results.append(await load("hot"))

        await asyncio.gather(*(one() for _ in range(500)))

    run_virtual(clock, main())
    assert results == ["hot"] * 500
    assert attempts == 3  # one fetch, retried twice, for 500 callers
    assert (budget.requests, budget.retries) == (1, 2)
    assert bucket.taken + bucket.waited == 3
    stats = load.stats()
    assert stats.cache.coalesced_waits == 499


# The orders docs/protection.md calls wrong, shown to be wrong.


def test_wrong_order_rate_limit_outside_cached_spends_tokens_on_hits() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=3, clock=clock)

    @cw.rate_limit(bucket, max_wait=0)
    @cw.cached(ttl=60, clock=clock)
    def load(key: str) -> str:
        return key

    assert [load("a") for _ in range(3)] == ["a"] * 3
    with pytest.raises(cw.RateLimited):
        load("a")  # a cache hit, refused for want of a token


def test_wrong_order_retry_inside_rate_limit_lets_one_token_pay_for_every_attempt() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)
    calls = 0

    def backend() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    wrong = cw.rate_limit(bucket, max_wait=0)(cw.retry(attempts=3, clock=clock)(backend))
    with pytest.raises(ConnectionError):
        wrong()
    assert calls == 3  # three backend calls on one token: past burst + rate * T
    right = cw.retry(attempts=3, clock=clock)(
        cw.rate_limit(cw.TokenBucket(rate=0.001, burst=1, clock=clock), max_wait=0)(backend)
    )
    with pytest.raises(cw.RateLimited):
        right()
    assert calls == 4  # one attempt per token


def test_wrong_order_retry_outside_cached_counts_every_waiter_as_a_request() -> None:
    clock = VirtualClock()
    budget = cw.RetryBudget(ratio=0.2, min_per_second=10, clock=clock)

    async def backend(key: str) -> str:
        await clock.asleep(0.05)
        raise ConnectionError("down")

    wrong = cw.retry(attempts=3, budget=budget, clock=clock)(
        cw.cached(ttl=60, clock=clock)(backend)
    )

    async def main() -> None:
        await asyncio.gather(*(wrong("hot") for _ in range(100)), return_exceptions=True)

    run_virtual(clock, main())
    assert budget.requests == 100  # one request per waiter, each free to retry on its own
    assert budget.retries > 1


def test_guard_takes_every_setting_of_cached_with_the_same_default() -> None:
    """guard derives its cache settings from cached (passed on by name, CACHED_SETTINGS)."""
    import inspect

    from cacheward._guard import CACHED_SETTINGS

    cached_params = inspect.signature(cw.cached).parameters
    guard_params = inspect.signature(cw.guard).parameters
    assert set(CACHED_SETTINGS) == set(cached_params)
    for name, param in cached_params.items():
        assert name in guard_params, f"guard lacks cached's {name}"
        assert guard_params[name].default == param.default, name
        assert guard_params[name].annotation == param.annotation, name


def test_guard_passes_cache_settings_on() -> None:
    clock = FakeClock()
    shared = cw.MemoryLayer()

    @cw.guard(ttl=1, layers=[shared], clock=clock, max_refreshes=1, wait_timeout=2)
    def fetch(x: str) -> str:
        return x

    assert fetch("a") == "a"
    assert shared.lookup("a") is not None


def test_the_old_spellings_are_still_accepted() -> None:
    clock = FakeClock()
    assert cw.cached(ttl=1, timeout=2, clock=clock)(lambda x: x)("a") == "a"
    assert cw.coalesce(timeout=2, clock=clock)(lambda x: x)("a") == "a"
    assert cw.guard(ttl=1, timeout=2, clock=clock)(lambda x: x)("a") == "a"
    breaker = cw.CircuitBreaker(failure_threshold=2, reset_timeout=3, clock=clock)
    assert "failures=2" in repr(breaker)
    assert "reset=3" in repr(breaker)
    layer = cw.RedisLayer.from_url("redis://127.0.0.1:1/0", timeout=0.3, connect_timeout=0.2)
    assert layer._factory is not None
    assert (layer._factory.timeout, layer._factory.connect_timeout) == (0.3, 0.2)
