"""Checked by mypy --strict (not run by pytest): the Redis layer and serializers, as used."""

from __future__ import annotations

from datetime import timedelta

import cacheguard as cg

layer = cg.RedisLayer.from_url(
    "redis://127.0.0.1:6379/0",
    timeout=0.1,
    connect_timeout=timedelta(milliseconds=100),
    namespace="billing",
    version=2,
    serializer=cg.PickleSerializer(key=b"k" * 32),
)
json_layer = cg.RedisLayer.from_url("redis://127.0.0.1:6379/0", serializer=cg.JsonSerializer())
serializer: cg.Serializer = cg.OrjsonSerializer()
events: dict[str, int] = layer.events()


@cg.cached(ttl=60, stale_ttl=600, layers=[cg.MemoryLayer(maxsize=1000), layer])
def load(customer_id: str) -> dict[str, str]:
    return {"customer": customer_id}


def use() -> None:
    config: dict[str, str] = load("c1")
    key = cg.CacheKey("c1", "billing:v1", ("c1",), {}, ("customer_id",))
    token: int | None = layer.acquire_lease(key, ttl=5.0)
    if token is not None:
        stored: bool = layer.set_fenced(key, cg.Entry(config, 0.0, 1.0, 2.0), token)
        layer.release_lease(key, token)
        print(stored)
    layer.close()
