"""One stats style: every object that counts has ``.stats()``, a frozen dataclass snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock


def counting_objects() -> list[tuple[str, Any]]:
    clock = FakeClock()
    import redis

    client = redis.Redis(socket_timeout=0.1, socket_connect_timeout=0.1)
    return [
        ("cached", cw.cached(ttl=1, clock=clock)(lambda x: x)),
        ("coalesce", cw.coalesce(clock=clock)(lambda x: x)),
        ("guard", cw.guard(ttl=1, clock=clock)(lambda x: x)),
        ("TokenBucket", cw.TokenBucket(rate=1, burst=1, clock=clock)),
        ("RetryBudget", cw.RetryBudget(clock=clock)),
        ("CircuitBreaker", cw.CircuitBreaker(clock=clock)),
        ("RedisLayer", cw.RedisLayer.from_url("redis://127.0.0.1:1/0")),
        ("RedisTokenBucket", cw.RedisTokenBucket(client, name="stats", rate=1)),
    ]


@pytest.mark.parametrize(("name", "obj"), counting_objects(), ids=lambda v: str(v)[:20])
def test_stats_is_a_frozen_dataclass_snapshot(name: str, obj: Any) -> None:
    stats = obj.stats()
    assert dataclasses.is_dataclass(stats), name
    field = dataclasses.fields(stats)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(stats, field, 1)
    assert type(stats).__name__ in cw.__all__, f"{name}: its stats type is not public"


def test_stats_count() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=2, clock=clock)
    assert [bucket.reserve(0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.stats() == cw.BucketStats(taken=2, waited=0, refused=0)
    assert cw.CircuitBreaker(clock=clock).stats().state == "closed"
