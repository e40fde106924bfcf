"""Events: every decision reaches the listeners that asked for it; listeners never break calls."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock, SimClock, run_simulated


class Broken:
    local = False
    name = "broken-redis"

    def get(self, key: Any) -> Any:
        raise ConnectionError("refused")

    def set(self, key: Any, entry: Any) -> None:
        raise ConnectionError("refused")

    def delete(self, key: Any) -> None:
        raise ConnectionError("refused")

    def clear(self) -> None:
        pass


def kinds(events: list[cw.Event]) -> list[str]:
    return [e.kind.value for e in events]


def test_miss_fetch_and_hit_events() -> None:
    events: list[cw.Event] = []
    with cw.listening(events.append, kinds=list(cw.EventKind)):

        @cw.cached(ttl=10, namespace="cfg")
        def fetch(key: str) -> str:
            return key

        fetch("a")
        fetch("a")
    fetch("a")  # after the block: not delivered
    # (Listening is process-wide: a background thread an earlier test left, e.g. a layer's
    # replay, may emit meanwhile; this function's own events are the ones checked.)
    events = [e for e in events if e.source == "cfg:v1"]
    assert kinds(events) == ["miss", "fetch", "hit"]
    assert events[1].duration is not None


def test_hits_are_not_delivered_unless_asked_for() -> None:
    events: list[cw.Event] = []

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key

    with cw.listening(events.append):
        fetch("a")
        fetch("a")
    assert "hit" not in kinds(events)


def test_failures_backoff_layer_errors_and_breaker_trips() -> None:
    events: list[cw.Event] = []
    clock = FakeClock()

    @cw.cached(ttl=10, layers=[cw.MemoryLayer(), Broken()], clock=clock, breaker_failures=2)
    def fetch(key: str) -> str:
        raise TimeoutError("db slow")

    with cw.listening(events.append):
        with pytest.raises(TimeoutError):
            fetch("a")
        with pytest.raises(cw.BackoffActive):
            fetch("a")
    seen = kinds(events)
    assert "fetch_error" in seen
    assert "backoff_rejected" in seen
    assert seen.count("layer_error") == 2
    assert "breaker_opened" in seen
    opened = next(e for e in events if e.kind is cw.EventKind.BREAKER_OPENED)
    assert opened.layer == "broken-redis"
    assert isinstance(next(e for e in events if e.kind.value == "fetch_error").error, TimeoutError)


def test_a_raising_listener_never_breaks_a_call() -> None:
    def bad(event: cw.Event) -> None:
        raise RuntimeError("listener bug")

    before = cw.listener_errors()

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key.upper()

    with cw.listening(bad, kinds=list(cw.EventKind)):
        assert fetch("a") == "A"
        assert fetch("a") == "A"
    assert cw.listener_errors() - before == 3  # miss, fetch, hit


def test_logging_is_quiet_by_default_and_warns_on_breaker_trips(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @cw.cached(ttl=10, layers=[cw.MemoryLayer(), Broken()], breaker_failures=1)
    def fetch(key: str) -> str:
        return key

    with caplog.at_level(logging.DEBUG, logger="cacheward"):
        fetch("a")
    records = [r for r in caplog.records if r.name == "cacheward"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "breaker_opened" in records[0].getMessage()
    assert "broken-redis" in records[0].getMessage()


def test_unlisten_and_bad_kinds() -> None:
    events: list[cw.Event] = []
    cw.listen(events.append)
    cw.unlisten(events.append)

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key

    fetch("a")
    assert events == []
    with pytest.raises(ValueError, match="not_a_kind"):
        cw.listen(events.append, kinds=["not_a_kind"])


# --- every kind is emitted where it is documented ------------------------------------------------


class Switchable(Broken):
    """A shared layer that fails until told to work (then it stores nothing: every read
    misses)."""

    def __init__(self) -> None:
        self.up = False

    def get(self, key: Any) -> Any:
        if not self.up:
            raise ConnectionError("refused")
        return None

    def set(self, key: Any, entry: Any) -> None:
        if not self.up:
            raise ConnectionError("refused")


def fire_cache_kinds() -> None:
    """hit, miss, fetch, stale_served, refresh_started / skipped, invalidated; fetch_error,
    backoff_rejected; layer_error / skipped and a layer breaker's open / half-open / close."""
    clock = FakeClock()
    executor = cw.testing.ManualExecutor()

    @cw.cached(ttl=10, stale_ttl=100, clock=clock, refresh_executor=executor, max_refreshes=1)
    def fetch(key: str) -> str:
        return key

    fetch("a")
    fetch("b")
    fetch("a")
    clock.advance(20)
    fetch("a")  # stale: served, refresh started (the one slot)
    fetch("b")  # stale: served, refresh skipped (the slot is busy)
    executor.run_pending()
    fetch.invalidate("a")

    layer = Switchable()

    @cw.cached(ttl=10, layers=[layer], clock=clock, breaker_failures=1, breaker_reset=1)
    def failing(key: str) -> str:
        raise TimeoutError("db slow")

    with pytest.raises(TimeoutError):
        failing("a")  # layer_error, breaker_opened, fetch_error
    with pytest.raises(cw.BackoffActive):
        failing("a")  # layer_skipped, backoff_rejected
    clock.advance(2)
    layer.up = True
    with pytest.raises(TimeoutError):
        failing("a")  # the back-off is over; the probe read: breaker_half_open, _closed


def fire_wait_kinds() -> None:
    """coalesced_wait and wait_timeout (real threads: one waits for the other's fetch)."""
    import threading

    release = threading.Event()
    entered = threading.Event()

    @cw.cached(ttl=10, wait_timeout=0.05)
    def slow(key: str) -> str:
        entered.set()
        release.wait(5)
        return key

    leader = threading.Thread(target=slow, args=("a",))
    leader.start()
    entered.wait(5)
    with pytest.raises(cw.FetchTimeout):
        slow("a")  # joins the leader's fetch, gives up at its timeout
    release.set()
    leader.join(5)


def fire_protection_kinds() -> None:
    """rate_limited, retry, budget_exhausted, limit_changed."""
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=1, clock=clock)

    @cw.rate_limit(bucket, max_wait=0)
    def limited() -> None:
        return None

    limited()
    with pytest.raises(cw.RateLimited):
        limited()
    budget = cw.RetryBudget(ratio=0.01, min_per_second=0.01, clock=clock)

    @cw.retry(attempts=5, budget=budget, clock=clock)
    def flaky() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises((ConnectionError, cw.RetryBudgetExhausted)):
            flaky()  # the budget's reserve allows a retry or two, then it is spent

    @cw.retry(attempts=2, clock=clock)
    def once() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        once()  # retried once (its own budget has room)
    fire_limit_changed()


def fire_limit_changed() -> None:
    """limit_changed: an adaptive limit whose backend slows past a few callers halves."""
    clock = SimClock()
    limit = cw.AdaptiveLimit(initial=40, clock=clock, throttle=None, name="db")

    async def backend() -> None:
        await clock.asleep(0.05 if limit.inflight <= 3 else 0.5)

    limited = cw.rate_limit(limit, max_wait=5, clock=clock)(backend)

    async def main() -> None:
        await asyncio.gather(*(limited() for _ in range(300)), return_exceptions=True)

    run_simulated(main(), clock=clock)


def fire_lease_kinds(url: str) -> None:
    """lease_taken, lease_wait, lease_lost, serializer_rejected (a real Redis)."""
    import threading
    import time

    import redis as redis_py

    raw = redis_py.Redis.from_url(url)
    holder = cw.RedisLayer.from_url(url, socket_timeout=1.0, namespace="kinds")
    other = cw.RedisLayer.from_url(url, socket_timeout=1.0, namespace="kinds")
    raw.delete(*(raw.keys("cacheward:kinds:*") or ["none"]))
    entered = threading.Event()

    def key_of(name: str) -> cw.CacheKey:
        return cw.CacheKey(name, "kinds-fn:v1", (name,), {}, ("key",))

    @cw.cached(ttl=60, layers=[holder], namespace="kinds-fn")
    def first(key: str) -> str:
        entered.set()
        time.sleep(0.1)
        if key == "lost":  # meanwhile the lease expires and another process stores a value
            raw.delete(holder.redis_key(key_of(key)) + ":lease")
            now = time.time() + 1
            other.set(key_of(key), cw.Entry("newer", now, now + 60, now + 60, now + 60))
        return key

    @cw.cached(ttl=60, layers=[other], namespace="kinds-fn")
    def second(key: str) -> str:
        return key

    thread = threading.Thread(target=first, args=("a",))
    thread.start()  # lease_taken
    entered.wait(5)
    assert second("a") == "a"  # lease_wait: the holder's value arrives
    thread.join(5)
    assert first("lost") == "lost"  # its publish is refused: lease_lost
    raw.set(holder.redis_key(key_of("forged")), b"\xc7\x01" + b"not an entry" * 8)
    assert holder.get(key_of("forged")) is None  # serializer_rejected
    holder.close()  # waits for the background publish
    other.close()
    raw.close()


class _FlakyLayer:
    """A shared (non-local) layer in a dict whose deletes raise while ``down``."""

    name = "flaky"
    local = False

    def __init__(self) -> None:
        self.data: dict[str, cw.Entry] = {}
        self.down = False

    def get(self, key: cw.CacheKey) -> cw.Entry | None:
        return self.data.get(key.text)

    def set(self, key: cw.CacheKey, entry: cw.Entry) -> None:
        self.data[key.text] = entry

    def delete(self, key: cw.CacheKey) -> None:
        if self.down:
            raise ConnectionError("down")
        self.data.pop(key.text, None)

    def clear(self) -> None:
        self.data.clear()


def fire_replay_kinds() -> None:
    """invalidations_replayed: an invalidation kept while the layer is down reaches it later."""
    import time

    layer = _FlakyLayer()

    @cw.cached(ttl=60, layers=[layer], breaker_reset=0.05, namespace="kinds-replay")
    def load(key: str) -> str:
        return key

    layer.down = True
    assert not load.invalidate("a")  # kept: the layer is down
    layer.down = False
    for _ in range(1000):  # bounded: the background replay is due within a few resets
        if load.stats().invalidations_replayed:
            return
        time.sleep(0.01)
    raise AssertionError("the kept invalidation was never replayed")


def fire_bucket_kinds(url: str) -> None:
    """bucket_fallback, bucket_shared: the shared bucket's key has the wrong type (any Redis
    error sends the bucket to its local share), then is fixed and the next probe gets through."""
    import redis

    raw = redis.Redis.from_url(url, socket_timeout=2)
    clock = FakeClock()
    bucket = cw.RedisTokenBucket(
        raw, name="kinds-bucket", rate=100, burst=100, probe_interval=1.0, clock=clock
    )
    key = "cacheward:bucket:{kinds-bucket}"
    raw.delete(key)
    raw.set(key, "not a hash")
    assert bucket.reserve(0.0) == 0.0  # WRONGTYPE: a local token, and the bucket falls back
    assert bucket.mode == "fallback"
    raw.delete(key)
    clock.advance(1.5)
    assert bucket.reserve(0.0) == 0.0  # the probe reaches Redis again
    assert bucket.mode == "shared"
    raw.delete(key)
    raw.close()


def test_bucket_transitions_are_logged_once_each(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator sees the shared bucket leave Redis and come back, one line each."""
    events: list[cw.Event] = []
    with (
        caplog.at_level(logging.WARNING, logger="cacheward"),
        cw.listening(
            events.append, kinds=[cw.EventKind.BUCKET_FALLBACK, cw.EventKind.BUCKET_SHARED]
        ),
    ):
        fire_bucket_kinds(redis_url)
    assert [e.kind for e in events] == [cw.EventKind.BUCKET_FALLBACK, cw.EventKind.BUCKET_SHARED]
    assert events[0].error is not None
    assert "bucket_fallback source=kinds-bucket" in caplog.text
    assert "bucket_shared source=kinds-bucket" in caplog.text
    assert "(recovered: bucket_fallback is over)" in caplog.text


def fire_backplane_kinds(url: str) -> None:
    """backplane_lost, backplane_reconnected: the subscriber's first connection fails, the
    second subscribes."""
    import redis

    from cacheward._backplane import Stack, Subscriber

    raw = redis.Redis.from_url(url, socket_timeout=2)
    tries: list[int] = []

    def connect() -> Any:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("refused")
        return raw.pubsub()

    subscriber = Subscriber(connect, "cacheward:kinds:backplane", "kinds-backplane")
    subscriber.register(Stack(cw.MemoryLayer(), "kinds:v1", subscriber.channel, time.time, 5.0))
    deadline = time.monotonic() + 10
    while not subscriber.up:
        assert time.monotonic() < deadline, "the backplane never subscribed"
        time.sleep(0.01)
    subscriber.close()
    raw.close()


def test_every_event_kind_is_emitted() -> None:
    """Each documented kind fires in a scenario (a kind nobody emits must not be documented
    or exported as a metric)."""
    import os

    events: list[cw.Event] = []
    with cw.listening(events.append, kinds=list(cw.EventKind)):
        fire_cache_kinds()
        fire_wait_kinds()
        fire_protection_kinds()
        fire_lease_kinds(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        fire_bucket_kinds(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        fire_replay_kinds()
        fire_backplane_kinds(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    missing = set(cw.EventKind) - {e.kind for e in events}
    assert not missing, sorted(k.value for k in missing)
