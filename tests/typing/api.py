"""Checked by mypy --strict (not run by pytest): the public API types as users see them."""

from __future__ import annotations

import cacheward as cw
from cacheward.testing import FakeClock


@cw.cached(ttl=60, stale_ttl=600, clock=FakeClock())
def load(customer_id: str, region: str = "eu") -> dict[str, str]:
    return {"customer": customer_id, "region": region}


@cw.cached(ttl=60)
async def aload(customer_id: str) -> list[int]:
    return [len(customer_id)]


@cw.coalesce()
def work(x: int) -> float:
    return x / 2


def sync_api() -> None:
    config: dict[str, str] = load("c1", region="us")
    load.invalidate("c1")
    stats: cw.CacheStats = load.stats()
    hits: int = stats.hits
    half: float = work(3)
    print(config, hits, half)


async def async_api() -> None:
    values: list[int] = await aload("c1")
    await aload.invalidate("c1")
    print(values, aload.stats().fetches)
