"""Checked by mypy --strict and pyright (not run by pytest): test mode and Sentinel, as used."""

from __future__ import annotations

import cacheward as cw
from cacheward.testing import disabled


@cw.cached(ttl=60)
def load(customer_id: str) -> dict[str, str]:
    return {"customer": customer_id}


@disabled(limits=True)
def uncached() -> dict[str, str]:
    return load("c1")


def use() -> None:
    with disabled(retries=True):
        first: dict[str, str] = load("c1")
    with cw.bypass(limits=True):
        second: dict[str, str] = load("c1")
    third: dict[str, str] = uncached()
    print(first, second, third)
    layer = cw.RedisLayer.from_url("redis+sentinel://10.0.0.1,10.0.0.2/cache/0", timeout=0.1)
    print(layer)
