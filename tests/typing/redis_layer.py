"""Checked by mypy --strict (not run by pytest): the Redis layer and serializers, as used."""

from __future__ import annotations

from datetime import timedelta

import cacheward as cw

layer = cw.RedisLayer.from_url(
    "redis://127.0.0.1:6379/0",
    socket_timeout=0.1,
    socket_connect_timeout=timedelta(milliseconds=100),
    namespace="billing",
    version=2,
    serializer=cw.PickleSerializer(key=b"k" * 32),
)
json_layer = cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", serializer=cw.JsonSerializer())
serializer: cw.Serializer = cw.OrjsonSerializer()
events: dict[str, int] = layer.events()


@cw.cached(ttl=60, stale_ttl=600, layers=[cw.MemoryLayer(maxsize=1000), layer])
def load(customer_id: str) -> dict[str, str]:
    return {"customer": customer_id}


def use() -> None:
    config: dict[str, str] = load("c1")
    key = cw.CacheKey("c1", "billing:v1", ("c1",), {}, ("customer_id",))
    token: int | None = layer.acquire_lease(key, ttl=5.0)
    if token is not None:
        stored: bool = layer.set_fenced(key, cw.Entry(config, 0.0, 1.0, 2.0), token)
        layer.release_lease(key, token)
        print(stored)
    layer.close()
