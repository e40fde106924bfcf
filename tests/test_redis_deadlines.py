"""Every layer operation ends within the layer's own bound, whatever the bytes and the client do
(issue 15, items 1 and 2): a Redis that replies one byte every 30 ms through a real proxy, and
clients given by the user that keep redis-py's default retry policy.

Durations are compared with the layer's timeout plus a margin for a loaded 2-core machine; the
faults (trickle: about 11 bytes per reply, so at least 0.3 s per GET; retries with back-off,
seconds) are far beyond both, so the bounds cannot hold by luck.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward._redis import RedisLayer
from cacheward.testing.chaos import RedisProxy
from servers import RedisServer

pytestmark = pytest.mark.redis

TIMEOUT = 0.1
#: Scheduling slack on a noisy 2-core machine; the trickled reply alone takes >= 0.3 s.
MARGIN = 0.15


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


def _key(name: str) -> cw.CacheKey:
    return cw.CacheKey(name, "deadlines:v1", (name,), {}, ("key",))


def _entry(value: Any) -> cw.Entry:
    now = time.time()
    return cw.Entry(
        value=value, created=now, fresh_until=now + 60, stale_until=now + 60, error_until=now + 60
    )


def _timed(call: Any) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


def test_a_trickled_reply_ends_a_sync_command_at_its_deadline(server: RedisServer) -> None:
    with RedisProxy(server.port) as proxy:
        layer = RedisLayer.from_url(proxy.url, socket_timeout=TIMEOUT, stall_timeout=0)
        key = _key("slow")
        layer.set(key, _entry("x" * 200))
        assert layer.get(key) is not None
        proxy.trickle(0.03)
        took, error = _timed(lambda: layer.get(key))
        assert type(error).__name__ == "TimeoutError", error
        assert took <= TIMEOUT + MARGIN, took
        assert layer.stats().timeouts == 1
        proxy.heal()
        assert layer.get(key) is not None  # the cut connection was dropped, a new one works
        layer.close()


def test_without_the_deadline_a_trickled_reply_holds_the_caller(server: RedisServer) -> None:
    """The sibling: redis-py's own socket timeout (per recv) lets the trickle through, so the
    command takes the whole reply's time (well past the layer's timeout)."""
    import redis

    with RedisProxy(server.port) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=TIMEOUT, socket_connect_timeout=1)
        client.set("cacheward-deadlines:raw", b"x" * 10)
        proxy.trickle(0.03)
        took, error = _timed(lambda: client.get("cacheward-deadlines:raw"))
        assert error is None
        assert took >= 3 * TIMEOUT, took
        proxy.heal()
        client.delete("cacheward-deadlines:raw")
        client.close()


def test_64_threads_behind_a_trickling_redis_end_within_the_deadline(server: RedisServer) -> None:
    with RedisProxy(server.port) as proxy:
        layer = RedisLayer.from_url(proxy.url, socket_timeout=TIMEOUT)
        calls = [0]
        lock = threading.Lock()

        def backend(key: str) -> str:
            with lock:
                calls[0] += 1
            return key

        fn = cw.cached(
            ttl=60, layers=[layer], namespace="deadlines", timeout=1.0, breaker_reset=30.0
        )(backend)
        proxy.trickle(0.03)
        durations: list[float] = []
        errors: list[BaseException] = []
        start = threading.Barrier(64)

        def caller(i: int) -> None:
            start.wait()
            for n in range(3):
                took, error = _timed(functools.partial(fn, f"k{i}-{n}"))
                durations.append(took)
                if error is not None:
                    errors.append(error)

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        proxy.heal()
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(durations) == 64 * 3
        # Each call: at most one read and one (background) write under the 0.1 s deadline.
        assert max(durations) <= 2 * TIMEOUT + 1.0, max(durations)
        stats = layer.stats()
        assert stats.timeouts >= 1
        assert fn.stats().layer_skips > 0  # the breaker opened on the timeouts
        layer.close()


def test_a_trickled_reply_ends_an_async_command_at_its_deadline(server: RedisServer) -> None:
    async def main() -> None:
        with RedisProxy(server.port) as proxy:
            layer = RedisLayer.from_url(proxy.url, socket_timeout=TIMEOUT, stall_timeout=0)
            key = _key("slow-async")
            await layer.aset(key, _entry("x" * 200))
            proxy.trickle(0.03)
            began = time.monotonic()
            with pytest.raises(Exception, match=r"[Tt]imeout") as caught:
                await layer.aget(key)
            assert time.monotonic() - began <= TIMEOUT + MARGIN
            assert type(caught.value).__name__ == "TimeoutError"
            proxy.heal()
            await layer.aclose()

    asyncio.run(main())


# --- item 2: whatever client the user passes -------------------------------------------------


def _retrying_sync(port: int) -> Any:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis(
        port=port,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=2, base=0.5), 5),
        health_check_interval=1,
    )


def test_a_users_retrying_client_is_bounded_and_left_untouched(server: RedisServer) -> None:
    with RedisProxy(server.port) as proxy:
        client = _retrying_sync(proxy.port)
        retry, pool_class = client.get_retry(), client.connection_pool.connection_class
        layer = RedisLayer(client)
        key = _key("user")
        layer.set(key, _entry(1))
        assert layer.get(key) is not None
        proxy.blackhole()
        took, error = _timed(lambda: layer.get(key))
        assert type(error).__name__ == "TimeoutError", error
        assert took <= TIMEOUT + MARGIN, took
        proxy.heal()
        proxy.reset()
        assert layer.get(key) is not None
        # The user's object is as it was: same retry policy, same connection class.
        assert client.get_retry() is retry
        assert client.get_retry().get_retries() == 5
        assert client.connection_pool.connection_class is pool_class
        layer.close()
        client.close()


def test_the_users_retrying_client_itself_would_hold_the_caller(server: RedisServer) -> None:
    """The sibling: the same client used directly retries with back-off for seconds."""
    with RedisProxy(server.port) as proxy:
        client = _retrying_sync(proxy.port)
        client.ping()
        proxy.blackhole()
        took, error = _timed(lambda: client.get("cacheward-deadlines:any"))
        assert error is not None
        assert took >= 5 * TIMEOUT, took
        proxy.heal()
        client.close()


def test_a_users_retrying_asyncio_client_is_bounded(server: RedisServer) -> None:
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    async def main() -> None:
        with RedisProxy(server.port) as proxy:
            client = redis.asyncio.Redis(
                port=proxy.port,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                retry=Retry(ExponentialBackoff(cap=2, base=0.5), 5),
            )
            layer = RedisLayer(client)
            key = _key("user-async")
            await layer.aset(key, _entry(1))
            assert await layer.aget(key) is not None
            proxy.blackhole()
            began = time.monotonic()
            with pytest.raises(Exception, match=r"[Tt]imeout"):
                await layer.aget(key)
            assert time.monotonic() - began <= TIMEOUT + MARGIN
            assert client.get_retry().get_retries() == 5
            proxy.heal()
            await layer.aclose()
            await client.aclose()

    asyncio.run(main())


class CountingSocket:
    """A socket stand-in that counts ``settimeout`` calls (each one a syscall on a real one)."""

    def __init__(self) -> None:
        self.timeout: float | None = 0.25
        self.calls: list[float | None] = []

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.calls.append(timeout)
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        return None

    def recv_into(self, buffer: Any) -> int:
        return 0


def quick_commands(sock: Any, count: int) -> list[float | None]:
    from cacheward import _redisclient

    wrapped = _redisclient._DeadlineSocket(sock)
    for _ in range(count):
        with _redisclient.deadline(0.25):
            wrapped.sendall(b"GET k")
            wrapped.recv_into(bytearray(16))
            assert sock.timeout is not None
            assert sock.timeout <= 0.25  # never more than what is left of the deadline
    return sock.calls


def test_quick_commands_keep_the_armed_socket_timeout() -> None:
    calls = quick_commands(CountingSocket(), 100)
    assert len(calls) <= 2, calls  # armed once (maybe twice), not twice per command


def test_a_command_near_its_deadline_is_rearmed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sibling that can fail: once what is left drops below the armed timeout by more than
    # the slack, the socket gets the shorter timeout (so the op cannot outlast the deadline).
    from cacheward import _redisclient

    sock = CountingSocket()
    wrapped = _redisclient._DeadlineSocket(sock)
    now = [100.0]
    monkeypatch.setattr(_redisclient, "_monotonic", lambda: now[0])
    with _redisclient.deadline(0.25):
        wrapped.sendall(b"GET k")
        armed = sock.timeout
        now[0] += 0.1  # a slow reply: 100 ms gone
        wrapped.recv_into(bytearray(16))
    assert armed is not None
    assert sock.timeout is not None
    assert sock.timeout <= 0.15 + 1e-9 < armed
