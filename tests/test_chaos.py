"""``cacheward.testing.chaos``: the proxy's faults reach redis-py as real network faults, and the
chaos layer's scheduled faults are misses for the caller, sync and async."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import cacheward as cw
from cacheward.testing import FakeClock, InlineExecutor
from cacheward.testing.chaos import ChaosError, ChaosLayer, RedisProxy
from servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[RedisProxy]:
    with RedisProxy(server.port) as running:
        yield running


def client(proxy: RedisProxy, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host=proxy.host,
        port=proxy.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def test_a_plain_pipe_and_its_repr(proxy: RedisProxy) -> None:
    conn = client(proxy)
    assert conn.ping()
    assert proxy.mode == "pipe"
    assert proxy.connections == 1
    assert f"-> {proxy.target[1]}" in repr(proxy)
    conn.close()


def test_delay_holds_every_chunk_each_way(proxy: RedisProxy) -> None:
    conn = client(proxy)
    conn.ping()
    proxy.delay(0.05)
    started = time.monotonic()
    assert conn.ping()
    assert time.monotonic() - started >= 0.1  # 50 ms there and 50 ms back, at least
    assert proxy.mode == "delay"
    conn.close()


def test_trickle_sends_a_reply_one_byte_at_a_time(proxy: RedisProxy) -> None:
    proxy.trickle(0.02)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        received = b""
        chunks = 0
        started = time.monotonic()
        while not received.endswith(b"\r\n"):
            chunk = sock.recv(64)
            assert chunk, "the proxy closed the connection"
            received += chunk
            chunks += 1
        elapsed = time.monotonic() - started
    assert received == b"+PONG\r\n"
    # Bytes keep arriving (so a per-recv socket timeout never fires), and the whole reply took
    # at least one interval between each two bytes (less 10 %: asyncio may wake a timer a
    # clock tick early).
    assert elapsed >= 6 * 0.02 * 0.9
    assert chunks >= 2
    assert proxy.mode == "trickle"


def test_blackhole_is_a_timeout_and_heal_ends_it(proxy: RedisProxy) -> None:
    conn = client(proxy, timeout=0.2)
    conn.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        conn.ping()
    proxy.heal()
    conn.close()
    fresh = client(proxy)
    assert fresh.ping()
    fresh.close()


def test_cut_replies_drops_the_connection_mid_reply(proxy: RedisProxy) -> None:
    conn = client(proxy)
    conn.set("big", b"x" * 10_000)
    proxy.cut_replies(100)
    assert proxy.mode == "cut"
    with pytest.raises(redis.ConnectionError):
        conn.get("big")
    proxy.heal()
    assert conn.get("big") == b"x" * 10_000  # a new connection
    conn.close()


def ping_raw(sock: socket.socket) -> bytes:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    return sock.recv(64)


def test_reset_aborts_open_connections_and_refuse_stops_listening(proxy: RedisProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        assert ping_raw(sock) == b"+PONG\r\n"
        proxy.reset()
        with pytest.raises(ConnectionResetError):  # a RST, not a FIN (which reads as b"")
            ping_raw(sock)
    conn = client(proxy)
    assert conn.ping()  # new connections still work
    proxy.refuse()
    assert proxy.mode == "refuse"
    with pytest.raises(redis.ConnectionError):
        conn.ping()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=5).close()
    proxy.heal()
    assert conn.ping()  # listening again on the same port
    conn.close()


# --- ChaosLayer ------------------------------------------------------------------------------


def test_a_schedule_of_faults_is_a_miss_for_every_caller_sync() -> None:
    clock = FakeClock()
    layer = ChaosLayer(
        cw.MemoryLayer(),
        schedule=["error", "hang", "corrupt", "latency", "ok"],
        sleep=clock.sleep,
        max_hang=0.5,
    )
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[layer], clock=clock, breaker_failures=100)
    def load(key: str) -> str:
        calls.append(key)
        return key.upper()

    assert [load(k) for k in "abcde"] == ["A", "B", "C", "D", "E"]  # never an exception
    steps = [step for _, step in layer.log]
    assert {"error", "hang", "corrupt", "latency"} <= set(steps)
    assert 0.5 in clock.sleeps  # the hang was bounded by max_hang, on the given clock
    assert layer.local is False


def test_a_corrupt_entry_is_never_served() -> None:
    layer = ChaosLayer(cw.MemoryLayer(), rule=lambda op, n: "corrupt" if op == "get" else "ok")
    calls: list[str] = []

    # Shared-layer writes inline: a write still in the background keeps its flight, and a call
    # arriving meanwhile is answered by that flight instead of reading the layer.
    @cw.cached(ttl=60, layers=[layer], refresh_executor=InlineExecutor())
    def load(key: str) -> str:
        calls.append(key)
        return key

    assert [load("a") for _ in range(3)] == ["a", "a", "a"]
    assert calls == ["a", "a", "a"]  # every read was garbage: a miss each time
    assert load.stats().layer_errors >= 3


def test_a_schedule_of_faults_is_a_miss_for_every_caller_async() -> None:
    async def main() -> tuple[list[str], list[str]]:
        clock = FakeClock()
        layer = ChaosLayer(
            cw.MemoryLayer(), schedule=["error", "hang", "ok"], asleep=clock.asleep, max_hang=2
        )
        calls: list[str] = []

        @cw.cached(ttl=60, layers=[layer], clock=clock, breaker_failures=100)
        async def load(key: str) -> str:
            calls.append(key)
            return key

        served = [await load(k) for k in "abc"]
        return served, calls

    served, calls = asyncio.run(main())
    assert served == ["a", "b", "c"]


def test_chaos_layer_checks_its_settings() -> None:
    with pytest.raises(cw.ConfigurationError, match="schedule"):
        ChaosLayer(cw.MemoryLayer(), schedule=["boom"])  # type: ignore[list-item]
    with pytest.raises(cw.ConfigurationError, match="not both"):
        ChaosLayer(cw.MemoryLayer(), schedule=["error"], rule=lambda op, n: "ok")
    layer = ChaosLayer(cw.MemoryLayer(), schedule=["error"])
    with pytest.raises(ChaosError):
        layer.clear()
    assert isinstance(ChaosError("x"), ConnectionError)


def test_wrapping_a_redis_layer_behind_a_proxy(proxy: RedisProxy) -> None:
    # Both tools together: a layer whose Redis is partitioned half the time.
    inner = cw.RedisLayer.from_url(proxy.url, timeout=0.2, namespace="chaos-test")
    layer = ChaosLayer(inner, schedule=["ok", "error"])
    calls: list[Any] = []

    # Writes inline, so none reaches the proxy after this test has closed the layer.
    @cw.cached(
        ttl=60,
        layers=[cw.MemoryLayer(), layer],
        cross_process=False,
        refresh_executor=InlineExecutor(),
    )
    def load(key: str) -> str:
        calls.append(key)
        return key

    proxy.blackhole()
    assert [load(k) for k in ("p", "q")] == ["p", "q"]
    proxy.heal()
    inner.close()
    assert calls == ["p", "q"]


class _Closable:
    """A wrapped layer that records when it was closed and what was still writing then."""

    name = "closable"
    local = False

    def __init__(self) -> None:
        self.closed_with: list[bool] = []
        self.write: Any = None

    def close(self) -> None:
        self.closed_with.append(self.write.done())

    async def aclose(self) -> None:
        self.close()


def test_close_waits_for_writes_made_through_the_wrapper_then_closes_the_inner_layer() -> None:
    # Background writes are tracked under the layer a function was given (the wrapper): the
    # wrapped layer's close alone would not wait for them.
    import concurrent.futures
    import threading

    from cacheward._background import track

    inner = _Closable()
    layer = ChaosLayer(inner)
    inner.write = concurrent.futures.Future()
    track([layer], inner.write)
    threading.Timer(0.05, inner.write.set_result, (None,)).start()
    layer.close()
    assert inner.closed_with == [True]


def test_aclose_waits_for_this_loops_writes_made_through_the_wrapper() -> None:
    from cacheward._background import track_task

    inner = _Closable()
    layer = ChaosLayer(inner)

    async def main() -> None:
        inner.write = asyncio.ensure_future(asyncio.sleep(0.05))
        track_task([layer], inner.write)
        await layer.aclose()

    asyncio.run(main())
    assert inner.closed_with == [True]
