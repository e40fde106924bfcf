"""Checked by mypy --strict (not run by pytest): the protection API's types as users see them."""

from __future__ import annotations

import cacheward as cw
from cacheward.testing import FakeClock

clock = FakeClock()
bucket = cw.TokenBucket(rate=50, burst=100, clock=clock)
budget = cw.RetryBudget(ratio=0.2, min_per_second=10, clock=clock)
breaker = cw.CircuitBreaker(failures=5, reset=10, clock=clock)


@cw.retry(attempts=3, budget=budget, clock=clock)
@cw.circuit_breaker(breaker)
@cw.rate_limit(bucket, max_wait=0.5)
def fetch(customer_id: str, *, region: str = "eu") -> dict[str, str]:
    return {"customer": customer_id, "region": region}


@cw.rate_limit(bucket)
async def afetch(customer_id: str) -> list[int]:
    return [len(customer_id)]


@cw.guard(ttl=60, stale_ttl=600, limiter=bucket, attempts=3, budget=budget, clock=clock)
def load(customer_id: str) -> dict[str, int]:
    return {customer_id: 1}


@cw.guard(ttl=60, limiter=bucket)
async def aload(customer_id: str, n: int = 1) -> bytes:
    return customer_id.encode() * n


def sync_api() -> None:
    config: dict[str, str] = fetch("c1", region="us")
    value: dict[str, int] = load("c1")
    load.invalidate("c1")
    stats: cw.GuardStats = load.stats()
    attempts: int = stats.attempts
    hits: int = stats.cache.hits
    limiter: cw.Limiter = load.limiter
    print(config, value, attempts, hits, limiter)


async def async_api() -> None:
    ints: list[int] = await afetch("c1")
    raw: bytes = await aload("c1", n=2)
    await aload.invalidate("c1")
    stats: cw.GuardStats = aload.stats()
    print(ints, raw, stats.breaker_state)


limit = cw.AdaptiveLimit(name="db", priorities={"interactive": 0.9, "batch": 0.1}, clock=clock)


@cw.rate_limit(limit, max_wait=0.5)
def adaptive_fetch(customer_id: str) -> dict[str, str]:
    return {"customer": customer_id}


@cw.guard(ttl=60, limiter=[bucket, limit], clock=clock)
async def both(customer_id: str) -> int:
    return len(customer_id)


def adaptive_api() -> None:
    with cw.priority("batch"):
        value: dict[str, str] = adaptive_fetch("c1")
    stats: cw.AdaptiveStats = limit.stats()
    batch: cw.PriorityStats = stats.priorities["batch"]
    current: float = limit.limit
    print(value, batch.admitted, current, stats.rejected["timeout"])
