"""A background worker that rebuilds cached configurations without starving the web processes.

Run it (from the repository root, with Redis on 127.0.0.1:6379 or ``REDIS_URL`` set)::

    python examples/worker.py                       # runs until stopped
    python examples/worker.py --iterations 100 --idle-exit 2

The web processes push the id of every customer whose configuration changed onto a Redis list;
this worker pops them and rebuilds each configuration through the same guarded fetch the web
processes use (same namespace, so the rebuilt value lands in the shared Redis layer).

Every database attempt, from the web processes and from the worker alike, takes a token from
one bucket, so a batch of ten thousand changes cannot push the database past ``rate``: when the
bucket is empty the worker gets ``cw.RateLimited`` and sleeps ``retry_after`` seconds instead of
queueing on the database.

The bucket is a ``cw.RedisTokenBucket`` named ``<namespace>:db``, the same one the web
processes (``examples/fastapi_service.py``, ``examples/flask_service.py``) take from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import cacheward as cw

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: The Redis list the web processes push changed customer ids onto.
QUEUE = "example:config-changed"


class Database:
    """Stands in for the real database: a table of customers and a count of queries."""

    def __init__(self) -> None:
        self.rows = {f"c{i}": {"plan": "pro" if i % 2 else "free"} for i in range(1000)}
        self._lock = threading.Lock()
        self.queries = 0

    def customer_config(self, customer_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.queries += 1
        row = self.rows.get(customer_id)
        return None if row is None else {"customer": customer_id, **row}


def connect(redis_url: str, *, timeout: float = 0.25) -> redis.Redis:
    """A Redis client with short timeouts and no client-side retries."""
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
    )


def guarded_fetch(
    client: redis.Redis,
    db: Database,
    *,
    namespace: str,
    limiter: cw.Limiter,
) -> Any:
    """The web processes' ``load_config``: same layers, same namespace, same limiter."""

    @cw.guard(
        ttl=60,
        stale_ttl=600,
        layers=[cw.MemoryLayer(maxsize=1_000), cw.RedisLayer(client, namespace=namespace)],
        limiter=limiter,
        max_wait=0.5,
        attempts=3,
        budget=cw.RetryBudget(ratio=0.2, min_per_second=10),
        namespace=f"{namespace}.load_config",
    )
    def load_config(customer_id: str) -> dict[str, Any] | None:
        return db.customer_config(customer_id)

    return load_config


def run(
    *,
    redis_url: str = REDIS_URL,
    namespace: str = "example",
    queue_name: str = QUEUE,
    iterations: int = 0,
    idle_exit: float = 0.0,
    rate: float = 50.0,
    burst: float = 100.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Rebuild configurations from the queue; return what was done.

    Args:
        redis_url: the shared Redis.
        namespace: the web processes' cache namespace.
        queue_name: the Redis list of changed customer ids.
        iterations: stop after this many jobs (0: run until stopped).
        idle_exit: stop when the queue has been empty this many seconds (0: never).
        rate: the database's token rate (tokens per second), for all processes together.
        burst: the bucket's size (the web processes must use the same rate and burst).
        sleep: how to wait when the bucket is empty.
    """
    client = connect(redis_url)
    queue = connect(redis_url, timeout=2.0)  # BRPOP blocks up to 1 s: a longer socket timeout
    db = Database()
    limiter = cw.RedisTokenBucket(client, name=f"{namespace}:db", rate=rate, burst=burst)
    load_config = guarded_fetch(client, db, namespace=namespace, limiter=limiter)
    done = {"jobs": 0, "rebuilt": 0, "unknown": 0, "rate_limited": 0, "failed": 0}
    idle_since = time.monotonic()
    try:
        while not iterations or done["jobs"] < iterations:
            try:
                popped = queue.brpop([queue_name], timeout=1)
            except redis.RedisError:
                popped = None  # Redis is down: the web processes cannot enqueue either
                sleep(1.0)
            if popped is None:
                if idle_exit and time.monotonic() - idle_since >= idle_exit:
                    break
                continue
            idle_since = time.monotonic()
            raw = popped[1]
            customer_id = raw.decode() if isinstance(raw, bytes) else raw
            done["jobs"] += 1
            try:
                load_config.invalidate(customer_id)
                config = load_config(customer_id)
            except (cw.RateLimited, cw.BackoffActive) as exc:
                # No token (or the key backs off after a refused fetch): the database is at
                # its rate. Put the job back and wait instead of queueing on the database.
                done["rate_limited"] += 1
                queue.rpush(queue_name, customer_id)
                sleep(exc.retry_after or 0.1)
                continue
            except (cw.CacheWardError, ConnectionError, TimeoutError):
                done["failed"] += 1
                continue
            done["rebuilt" if config is not None else "unknown"] += 1
    finally:
        client.close()
        queue.close()
    done["db_queries"] = db.queries
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--namespace", default="example")
    parser.add_argument("--queue", default=QUEUE, help="the Redis list of changed customer ids")
    parser.add_argument("--iterations", type=int, default=0, help="stop after N jobs (0: never)")
    parser.add_argument("--idle-exit", type=float, default=0.0, help="stop after S idle seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="database tokens per second")
    parser.add_argument("--burst", type=float, default=100.0, help="token bucket size")
    args = parser.parse_args(argv)
    done = run(
        redis_url=args.redis_url,
        namespace=args.namespace,
        queue_name=args.queue,
        iterations=args.iterations,
        idle_exit=args.idle_exit,
        rate=args.rate,
        burst=args.burst,
    )
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
