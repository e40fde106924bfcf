"""``RedisTokenBucket`` on real Redis: the shared rate across processes, idempotent takes under
redis-py's own retries, and the local fallback when its Redis is killed (and the way back)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import cacheward as cw
from cacheward._rediskit import script as _script
from cacheward.testing import FakeClock
from servers import RedisServer

pytestmark = pytest.mark.redis

SRC = str(Path(__file__).resolve().parents[1] / "src")


def client_for(url: str, **kwargs: Any) -> redis.Redis:
    options: dict[str, Any] = {
        "socket_timeout": 0.5,
        "socket_connect_timeout": 0.5,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = client_for(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def tokens_left(conn: redis.Redis, bucket: cw.RedisTokenBucket) -> float:
    raw = conn.hget(f"cacheward:bucket:{{{bucket.name}}}", "tokens")
    assert raw is not None
    return float(raw)


def took(bucket: cw.RedisTokenBucket) -> bool:
    """One non-waiting take: whether it got a token."""
    try:
        bucket.reserve(0)
    except cw.RateLimited:
        return False
    return True


def test_takes_the_burst_then_refuses_and_reports_when(client: redis.Redis, name: str) -> None:
    bucket = cw.RedisTokenBucket(client, name=name, rate=1, burst=3)
    assert [bucket.reserve(0) for _ in range(3)] == [0.0, 0.0, 0.0]
    with pytest.raises(cw.RateLimited) as caught:
        bucket.reserve(0.1)
    assert caught.value.retry_after is not None
    assert 0.5 < caught.value.retry_after <= 1.0
    wait = bucket.reserve(2.0)  # within max_wait: told when to come back
    assert 0.5 < wait <= 1.0
    assert bucket.claim() > 0.0  # too early
    assert (bucket.shared_takes, bucket.refused, bucket.mode) == (3, 1, "shared")
    assert tokens_left(client, bucket) < 1.0


def test_keys_share_one_cluster_hash_slot(client: redis.Redis, name: str) -> None:
    from redis.crc import key_slot

    bucket = cw.RedisTokenBucket(client, name=name, rate=1)
    request = bucket._begin(0.0)
    assert request is not None
    keys, _, _ = request
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_a_repeated_request_id_takes_one_token(client: redis.Redis, name: str) -> None:
    bucket = cw.RedisTokenBucket(client, name=name, rate=0.001, burst=5)
    request = bucket._begin(0.0)
    assert request is not None
    keys, args, _ = request
    replies = [_script("token_bucket.lua").run(client, keys, args) for _ in range(4)]
    assert replies == [b"0"] * 4  # the same answer every time...
    assert tokens_left(client, bucket) == pytest.approx(4.0, abs=0.01)  # ...and one token


NAIVE_TAKE = """
local tokens = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tokens >= 1 then redis.call('SET', KEYS[1], tokens - 1) return 1 end
return 0
"""


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    with RedisServer.started() as server:
        yield server


def test_redis_py_retrying_a_timed_out_take_never_takes_twice(own_server: RedisServer) -> None:
    # redis-py's own retry policy: a timeout sends the same EVALSHA again. DEBUG SLEEP holds
    # the server past the client's timeout, so the first send's outcome is unknown to it.
    retrying = own_server.client(socket_timeout=0.15, retry=Retry(NoBackoff(), 5))
    bucket = cw.RedisTokenBucket(retrying, name="db", rate=0.001, burst=100)
    assert bucket.reserve(0) == 0.0  # loads the script
    own_server.debug_sleep(0.5)
    assert bucket.reserve(0) == 0.0  # answered after redis-py re-sent it
    plain = own_server.client()
    assert tokens_left(plain, bucket) == pytest.approx(98.0, abs=0.01)
    plain.close()
    retrying.close()


def test_sibling_a_take_without_request_id_is_counted_twice(own_server: RedisServer) -> None:
    retrying = own_server.client(socket_timeout=0.15, retry=Retry(NoBackoff(), 5))
    retrying.eval(NAIVE_TAKE, 1, "naive", 100)
    own_server.debug_sleep(0.5)
    retrying.eval(NAIVE_TAKE, 1, "naive", 100)
    plain = own_server.client()
    left = float(plain.get("naive") or 0)
    plain.close()
    retrying.close()
    assert left < 98.0  # one logical take cost more than one token


def test_falls_back_to_its_local_share_when_redis_is_killed_and_returns_after_restart(
    own_server: RedisServer,
) -> None:
    clock = FakeClock()
    conn = own_server.client(socket_timeout=0.3, socket_connect_timeout=0.3)
    bucket = cw.RedisTokenBucket(
        conn, name="db", rate=0.001, burst=10, fallback_share=0.3, probe_interval=1, clock=clock
    )
    assert sum(bucket.reserve(0) == 0.0 for _ in range(10)) == 10
    with pytest.raises(cw.RateLimited):
        bucket.reserve(0)  # the shared bucket is empty
    own_server.kill()
    # Redis is gone: the local share (30 % of burst 10 = 3 tokens) and no more -- never open.
    assert sum(took(bucket) for _ in range(10)) == 3
    assert bucket.mode == "fallback"
    assert bucket.errors == 1  # one failed call, then no more Redis calls until the probe
    assert bucket.debt == 3.0  # what it took locally is owed to the shared bucket
    own_server.restart()  # same port, empty data set: the bucket is lost
    clock.advance(1)  # the probe interval
    # A lost bucket starts empty for a process that had used it (no second burst on top of
    # what the local shares took), and the debt is charged: refused, and no longer in fallback.
    assert not took(bucket)
    assert (bucket.mode, bucket.debt, bucket.shared_takes) == ("shared", 0.0, 10)
    assert tokens_left(conn, bucket) == pytest.approx(-3.0, abs=0.01)
    conn.close()


def test_asyncio_client_and_rate_limit(redis_url: str, name: str) -> None:
    async def main() -> tuple[list[object], str]:
        conn = redis.asyncio.Redis.from_url(
            redis_url,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        bucket = cw.RedisTokenBucket(conn, name=name, rate=0.001, burst=2)

        @cw.rate_limit(bucket, max_wait=0)
        async def fetch(key: str) -> str:
            return key

        async def outcome(key: str) -> object:
            try:
                return await fetch(key)
            except cw.RateLimited as exc:
                return type(exc)

        out = [await outcome(key) for key in "abc"]
        mode = bucket.mode
        await conn.aclose()
        return out, mode

    assert asyncio.run(main()) == (["a", "b", cw.RateLimited], "shared")


def test_client_checks(redis_url: str, client: redis.Redis) -> None:
    with pytest.raises(cw.ConfigurationError, match="socket_timeout"):
        cw.RedisTokenBucket(redis.Redis.from_url(redis_url), name="x", rate=1)
    with pytest.raises(cw.ConfigurationTypeError):
        cw.RedisTokenBucket(object(), name="x", rate=1)
    with pytest.raises(cw.ConfigurationError, match="name"):
        cw.RedisTokenBucket(client, name="a{b}", rate=1)
    with pytest.raises(cw.ConfigurationError, match="fallback_share"):
        cw.RedisTokenBucket(client, name="x", rate=1, fallback_share=0)
    with pytest.raises(cw.ConfigurationError, match="asyncio"):
        asyncio.run(cw.RedisTokenBucket(client, name="x", rate=1).areserve(0))


WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    import cacheward as cw

    url, name, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1,
                                  retry=Retry(NoBackoff(), 0))
    bucket = cw.RedisTokenBucket(client, name=name, rate={rate}, burst={burst})
    client.ping()
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.001)
    taken = 0
    end = start + duration
    while time.time() < end:
        try:
            bucket.reserve(0)
            taken += 1
        except cw.RateLimited as exc:
            time.sleep(min(exc.retry_after or 0.001, 0.002))
    print(taken, bucket.fallback_takes)
    """
)


@pytest.mark.slow
def test_four_processes_share_one_rate_within_ten_percent(redis_url: str, name: str) -> None:
    rate, burst, duration = 100.0, 20.0, 3.0
    script = WORKER.format(src=SRC, rate=rate, burst=burst)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, redis_url, name, repr(duration)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        for _ in range(4)
    ]
    for proc in procs:  # every interpreter has started and connected
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    start = time.time() + 0.2
    results = []
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{start!r}\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        taken, fallback = (int(x) for x in out.split())
        assert fallback == 0
        results.append(taken)
    expected = burst + rate * duration
    assert all(r > 0 for r in results)  # every process got a share
    assert abs(sum(results) - expected) <= 0.10 * expected, (results, expected)


def test_threads_share_one_bucket_without_losing_or_doubling_tokens(
    client: redis.Redis, name: str
) -> None:
    bucket = cw.RedisTokenBucket(client, name=name, rate=0.001, burst=50)
    taken: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        conn = client_for(_url(client))
        own = cw.RedisTokenBucket(conn, name=name, rate=0.001, burst=50)
        count = sum(took(own) for _ in range(40))
        with lock:
            taken.append(count)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 50
    assert bucket.name == name


def _url(conn: redis.Redis) -> str:
    kwargs = conn.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_redis_cluster_sync_and_asyncio_clients() -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    from servers import RedisClusterServers

    with RedisClusterServers.started() as cluster:
        client = RedisCluster.from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1)
        bucket = cw.RedisTokenBucket(client, name="db", rate=0.001, burst=3)
        assert sum(took(bucket) for _ in range(5)) == 3
        assert bucket.mode == "shared"
        client.close()

        async def main() -> int:
            aclient = AsyncRedisCluster.from_url(
                cluster.url, socket_timeout=1, socket_connect_timeout=1
            )
            shared = cw.RedisTokenBucket(aclient, name="db", rate=0.001, burst=3)

            async def atook() -> bool:
                try:
                    await shared.areserve(0)
                except cw.RateLimited:
                    return False
                return True

            got = [await atook() for _ in range(3)]
            await aclient.aclose()
            return sum(got)

        assert asyncio.run(main()) == 0  # the same bucket, already empty


def test_a_hung_redis_costs_one_timeout_per_probe_interval(own_server: RedisServer) -> None:
    clock = FakeClock()
    conn = own_server.client(socket_timeout=0.2, socket_connect_timeout=0.2)
    bucket = cw.RedisTokenBucket(
        conn, name="db", rate=0.001, burst=100, fallback_share=0.05, probe_interval=2, clock=clock
    )
    assert bucket.reserve(0) == 0.0
    with own_server.paused():  # SIGSTOP: connections stay open, nothing answers
        started = time.monotonic()
        results = [took(bucket) for _ in range(20)]
        first_pass = time.monotonic() - started
        clock.advance(2)
        took(bucket)  # the probe: one more timeout
    assert first_pass < 1.0  # one timeout (0.2 s), not twenty
    assert bucket.errors == 2
    assert sum(results) == 5  # the local share of burst 100 at 5 %, and nothing more
    clock.advance(2)
    assert bucket.reserve(0) == 0.0  # back to the shared bucket
    assert bucket.mode == "shared"
    conn.close()


def test_async_guard_falls_back_when_its_redis_is_killed(own_server: RedisServer) -> None:
    clock = FakeClock()

    async def main() -> tuple[list[object], str, str]:
        conn = redis.asyncio.Redis(
            host=own_server.host, port=own_server.port, socket_timeout=0.3,
            socket_connect_timeout=0.3, retry=AsyncRetry(NoBackoff(), 0),
        )  # fmt: skip
        bucket = cw.RedisTokenBucket(
            conn, name="db", rate=0.001, burst=2, fallback_share=0.5, clock=clock
        )
        calls: list[str] = []

        @cw.guard(ttl=60, limiter=bucket, max_wait=0, clock=clock, attempts=1)
        async def load(key: str) -> str:
            calls.append(key)
            return key

        async def outcome(key: str) -> object:
            try:
                return await load(key)
            except cw.RateLimited as exc:
                return type(exc)

        out = [await outcome(k) for k in ("a", "b", "c")]  # burst 2 shared
        own_server.kill()
        out += [await outcome(k) for k in ("d", "e")]  # local share: 1 token
        modes = bucket.mode
        own_server.restart()
        clock.advance(1)
        out.append(await outcome("f"))
        await conn.aclose()
        return out, modes, bucket.mode

    out, during, after = asyncio.run(main())
    # "f": the restarted bucket starts empty for this process and is charged its local take.
    assert out == ["a", "b", cw.RateLimited, "d", cw.RateLimited, cw.RateLimited]
    assert (during, after) == ("fallback", "shared")
