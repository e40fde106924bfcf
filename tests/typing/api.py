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


def write_through_api() -> None:
    done: cw.Invalidation = load.set({"customer": "c1"}, "c1")
    again: dict[str, str] = load.refresh("c1", region="us")
    found = load.get("c1")
    if found is not cw.MISSING:
        narrowed: dict[str, str] = found
        print(narrowed)
    print(done, again)


class Repo:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @cw.cached(ttl=60, self_key=lambda self: self.tenant)
    def load(self, customer_id: str) -> dict[str, str]:
        return {"customer": customer_id, "tenant": self.tenant}

    @cw.guard(ttl=60)
    async def aload(self, customer_id: str) -> int:
        return len(customer_id)


def method_api() -> None:
    repo = Repo("t1")
    row: dict[str, str] = repo.load("c1")
    repo.load.invalidate("c1")
    repo.load.set({"customer": "c1"}, "c1")
    fresh: dict[str, str] = repo.load.refresh("c1")
    through_class: dict[str, str] = Repo.load(repo, "c1")
    print(row, fresh, through_class, repo.load.stats().sets)


async def async_method_api() -> None:
    repo = Repo("t1")
    n: int = await repo.aload("c1")
    await repo.aload.invalidate("c1")
    await repo.aload.set(3, "c1")
    got = await repo.aload.get("c1")
    print(n, got)


def customer_tags(customer_id: str) -> list[str]:
    return [f"customer:{customer_id}"]


@cw.cached(ttl=60, tags=customer_tags)
def tagged(customer_id: str) -> str:
    return customer_id


@cw.guard(ttl=60, tags=["configs"])
async def atagged(customer_id: str) -> str:
    return customer_id


def tags_api() -> None:
    dropped: cw.Invalidation = cw.invalidate_tags("customer:c1", "configs")
    cleared: cw.Invalidation = tagged.cache_clear()
    print(dropped, cleared, tagged("c1"))


async def async_tags_api() -> None:
    dropped: cw.Invalidation = await cw.ainvalidate_tags("configs", layers=[])
    cleared: cw.Invalidation = await atagged.cache_clear()
    print(dropped, cleared, await atagged("c1"))
