"""An async FastAPI service whose configuration endpoint can never overload its database.

Run it (from the repository root, with Redis on 127.0.0.1:6379 or ``REDIS_URL`` set)::

    pip install -e '.[test]' uvicorn    # from a clone; the test extra has fastapi
    uvicorn examples.fastapi_service:create_app --factory --port 8000
    curl localhost:8000/customers/c1/config
    curl localhost:8000/metrics

``load_config`` is an ``async def`` fetch from the database under ``cw.guard``, which stacks,
from the outside in:

* caching: a ``MemoryLayer`` (L1) then a ``RedisLayer`` (L2) on a ``redis.asyncio`` client
  shared by every process; concurrent misses of one key make one database call (one per
  cluster while Redis is up), stale values are served while refreshing or when the database
  fails, and a failing key backs off;
* retries within a ``cw.RetryBudget``: transient errors are retried, but retries stay a
  fraction of requests, so they cannot multiply the load;
* a circuit breaker for the database;
* a ``cw.RedisTokenBucket`` named ``<namespace>:db``, shared with every other process using
  that name (the Flask service, the worker): every database attempt takes a token; when there
  is none within ``max_wait`` the caller gets ``cw.RateLimited`` (HTTP 503 with Retry-After)
  instead of queueing on the database.

If Redis is down, hung or flushed, requests are still served from L1 and the database, and the
bucket falls back to a local share of its rate. ``/metrics`` exports cacheward's counters for
Prometheus (``cacheward.contrib.prometheus``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import cacheward as cw
from cacheward.contrib.prometheus import PrometheusMetrics

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class Database:
    """Stands in for the real database: a table of customers and a count of queries."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency
        self.queries = 0
        self.rows = {f"c{i}": {"plan": "pro" if i % 2 else "free"} for i in range(100)}

    async def customer_config(self, customer_id: str) -> dict[str, Any] | None:
        self.queries += 1
        await asyncio.sleep(self.latency)
        row = self.rows.get(customer_id)
        return None if row is None else {"customer": customer_id, **row}


def create_app(
    *,
    redis_url: str = REDIS_URL,
    db: Database | None = None,
    namespace: str = "example",
    rate: float = 50.0,
    burst: float = 100.0,
) -> FastAPI:
    """Build the service: its Redis client, cache layers, guarded fetch and routes."""
    database = Database() if db is None else db
    # Short timeouts and no client-side retries: a hung Redis costs one short timeout, and
    # cacheward's per-layer breaker stops even that while Redis stays sick.
    client = redis.asyncio.Redis.from_url(
        redis_url,
        socket_timeout=0.25,
        socket_connect_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
    )
    # One bucket for every process that calls this database (same name, same Redis).
    bucket = cw.RedisTokenBucket(client, name=f"{namespace}:db", rate=rate, burst=burst)

    @cw.guard(
        ttl=60,
        stale_ttl=600,
        layers=[cw.MemoryLayer(maxsize=10_000), cw.RedisLayer(client, namespace=namespace)],
        limiter=bucket,
        max_wait=0.5,
        attempts=3,
        budget=cw.RetryBudget(ratio=0.2, min_per_second=10),
        namespace=f"{namespace}.load_config",
    )
    async def load_config(customer_id: str) -> dict[str, Any] | None:
        # An unknown customer is cached too (as None): a flood of bad ids cannot reach the
        # database more often than good ones.
        return await database.customer_config(customer_id)

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(load_config, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        metrics.close()
        await client.aclose()

    app = FastAPI(title="cacheward example", lifespan=lifespan)
    app.state.db = database
    app.state.load_config = load_config
    app.state.metrics = metrics

    @app.get("/customers/{customer_id}/config")
    async def get_config(customer_id: str) -> dict[str, Any]:
        try:
            config = await load_config(customer_id)
        except cw.RateLimited as exc:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
            raise HTTPException(503, "busy, retry later", headers=headers) from None
        except (cw.CacheWardError, ConnectionError, TimeoutError):
            raise HTTPException(503, "configuration temporarily unavailable") from None
        if config is None:
            raise HTTPException(404, f"no customer {customer_id}")
        return config

    @app.delete("/customers/{customer_id}/config", status_code=204)
    async def invalidate(customer_id: str) -> Response:
        await load_config.invalidate(customer_id)
        return Response(status_code=204)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return dataclasses.asdict(load_config.stats())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
