"""A synchronous Flask service, served by threads, whose database load stays bounded.

Run it (from the repository root, with Redis on 127.0.0.1:6379 or ``REDIS_URL`` set)::

    pip install -e '.[test]'             # from a clone; the test extra has flask
    flask --app examples.flask_service:create_app run --with-threads --port 8001
    curl localhost:8001/customers/c1/config

The same guard as the FastAPI example, in the synchronous colour, spelled out decorator by
decorator (``cw.guard`` stacks the same ones): ``load_config`` is a plain ``def``, called from
many request threads at once. ``cw.cached`` puts a ``MemoryLayer`` in front of a ``RedisLayer``
on a synchronous ``redis.Redis`` client; concurrent misses of one key make one database call
(the other threads wait for it, up to ``wait_timeout``); ``cw.retry`` retries within a
``cw.RetryBudget``; ``cw.rate_limit`` makes every database attempt take a token from the
``cw.RedisTokenBucket`` named ``<namespace>:db``, shared by all the threads and with every other
process using that name. With the same ``namespace`` the FastAPI service, this one and the
worker share both the cached entries and the bucket.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from typing import Any

import redis
from flask import Flask, Response, abort, jsonify
from redis.backoff import NoBackoff
from redis.retry import Retry

import cacheward as cw

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class Database:
    """Stands in for the real database: a table of customers and a count of queries."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency
        self.rows = {f"c{i}": {"plan": "pro" if i % 2 else "free"} for i in range(100)}
        self._lock = threading.Lock()
        self.queries = 0

    def customer_config(self, customer_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.queries += 1
        time.sleep(self.latency)
        row = self.rows.get(customer_id)
        return None if row is None else {"customer": customer_id, **row}


def create_app(
    *,
    redis_url: str = REDIS_URL,
    db: Database | None = None,
    namespace: str = "example",
    rate: float = 50.0,
    burst: float = 100.0,
) -> Flask:
    """Build the service: its Redis client, cache layers, guarded fetch and routes."""
    database = Database() if db is None else db
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=0.25,
        socket_connect_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
    )
    bucket = cw.RedisTokenBucket(client, name=f"{namespace}:db", rate=rate, burst=burst)
    budget = cw.RetryBudget(ratio=0.2, min_per_second=10)

    @cw.cached(
        ttl=60,
        stale_ttl=600,
        layers=[cw.MemoryLayer(maxsize=10_000), cw.RedisLayer(client, namespace=namespace)],
        namespace=f"{namespace}.load_config",
    )
    @cw.retry(attempts=3, budget=budget)
    @cw.rate_limit(bucket, max_wait=0.5)
    def load_config(customer_id: str) -> dict[str, Any] | None:
        return database.customer_config(customer_id)

    app = Flask(__name__)
    app.extensions["cacheward"] = {"db": database, "load_config": load_config, "redis": client}

    @app.get("/customers/<customer_id>/config")
    def get_config(customer_id: str) -> Any:
        try:
            config = load_config(customer_id)
        except cw.RateLimited as exc:
            response = jsonify(error="busy, retry later")
            response.status_code = 503
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after or 1)))
            return response
        except (cw.CacheWardError, ConnectionError, TimeoutError):
            return jsonify(error="configuration temporarily unavailable"), 503
        if config is None:
            abort(404)
        return jsonify(config)

    @app.delete("/customers/<customer_id>/config")
    def invalidate(customer_id: str) -> Response:
        load_config.invalidate(customer_id)
        return Response(status=204)

    @app.get("/stats")
    def stats() -> Any:
        return jsonify(dataclasses.asdict(load_config.stats()))

    return app
