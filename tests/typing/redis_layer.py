"""Checked by mypy --strict (not run by pytest): the Redis layer and serializers, as used."""

from __future__ import annotations

import dataclasses
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


# Large payloads: the default codec with a registry, signing, the cap, compression, a byte
# bound on memory, and the unstorable counter.
@dataclasses.dataclass
class Plan:
    name: str


msgpack = cw.MsgpackSerializer(types=[Plan], signing_key=b"s" * 32)
msgpack.register(complex, name="complex", to_state=lambda c: [c.real, c.imag], from_state=tuple)
big_layer = cw.RedisLayer.from_url(
    "redis://127.0.0.1:6379/0",
    serializer=msgpack,
    max_payload_bytes=16 * 1024 * 1024,
    compression="zstd",
    compress_above=32 * 1024,
)
signed_json: cw.Serializer = cw.JsonSerializer(signing_key=b"s" * 32)
bounded = cw.MemoryLayer(maxsize=1000, max_bytes=64 * 1024 * 1024, weigher=len, policy="lfu")
held: int = bounded.bytes


def unstorable(error: cw.UnstorableValue) -> tuple[str, str, int, int]:
    return error.reason, error.type_name, error.size, load.stats().unstorable
