"""Large and awkward payloads through a real Redis: exact types shared between processes, values
that cannot be stored (loud, counted, still served), the size cap, compression, bombs, and the
key-space and stamp rules (issue 15, items 12 and 14)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import logging
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._serialize import encode_entry
from servers import RedisServer

pytestmark = pytest.mark.redis

KEY = b"s" * 32


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture
def url(server: RedisServer) -> str:
    server.flushall()
    return server.url


_OPEN: list[cw.RedisLayer] = []


@pytest.fixture(autouse=True)
def _close_layers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def layer_at(url: str, **settings: Any) -> cw.RedisLayer:
    """``RedisLayer.from_url``, closed after the test."""
    made = cw.RedisLayer.from_url(url, **settings)
    _OPEN.append(made)
    return made


def make_key(*args: Any) -> CacheKey:
    return CacheKey(args, "tests:v1:fn", args, {}, ("a",))


def entry(value: Any, *, created: float | None = None) -> Entry:
    now = time.time() if created is None else created
    return Entry(value, now, now + 10, now + 20, now + 30)


CONFIG = {
    "customer": "c1",
    "rows": [
        (1, "a", decimal.Decimal("1.50"), datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)),
        (2, "b", None, datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)),
    ],
    "flags": {"x", "y"},
    "id": uuid.UUID(int=7),
}


def test_driver_values_are_shared_between_processes_with_their_types(url: str) -> None:
    calls: list[str] = []

    def make() -> Any:
        @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer_at(url, namespace="t")])
        def load(customer: str) -> dict[str, Any]:
            calls.append(customer)
            return CONFIG

        return load

    first, second = make(), make()  # two processes: their own memory layers, one Redis
    assert first("c1") == CONFIG
    back = second("c1")
    assert calls == ["c1"]
    assert back == CONFIG
    assert type(back["rows"][0]) is tuple
    assert type(back["rows"][0][2]) is decimal.Decimal
    assert type(back["flags"]) is set


def _unstorable_case(
    server: RedisServer, caplog: pytest.LogCaptureFixture, value: Any, **layer: Any
) -> Any:
    url = server.url
    remote = layer_at(url, namespace="big", **layer)
    calls = []

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), remote])
    def load_config(customer: str) -> Any:
        calls.append(customer)
        return value

    with caplog.at_level(logging.WARNING, logger="cacheward"):
        assert load_config("c1") is value  # served
        assert load_config("c1") is value  # and kept in memory
        assert load_config("c2") is value
        remote.close()  # waits for the writes, made after the callers were answered
    assert calls == ["c1", "c2"]
    assert load_config.stats().unstorable == 2
    records = [r for r in caplog.records if "could not be stored" in r.getMessage()]
    assert len(records) == 1, "logged once per function"
    message = records[0].getMessage()
    assert "load_config" in message
    assert type(value).__qualname__ in message
    stored = [
        k
        for k in server.command("KEYS", "cacheward:big:*")
        if not k.endswith((b":lease", b":fence"))
    ]
    assert stored == []  # nothing but the leases and their fencing counters
    assert remote.events()["writes"] == 0
    return remote, message


def test_a_value_over_max_payload_bytes_is_served_kept_in_memory_and_logged_once(
    url: str, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    remote, message = _unstorable_case(server, caplog, {"blob": "x" * 5000}, max_payload_bytes=1000)
    assert "raise max_payload_bytes" in message
    assert remote.events()["writes_too_large"] == 2
    assert remote.events()["errors"] == 0


def test_a_value_no_codec_can_store_is_served_and_logged_once_with_the_fix(
    url: str, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    class Opaque:
        pass

    remote, message = _unstorable_case(server, caplog, Opaque())
    assert "register it" in message or "convert it" in message
    assert remote.events()["encode_errors"] == 2


def test_unstorable_values_never_open_the_breaker(url: str) -> None:
    remote = layer_at(url, namespace="brk", max_payload_bytes=100)

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), remote], breaker_failures=2)
    def load(i: int) -> str:
        return "y" * 1000 if i % 2 else "small"

    for i in range(10):
        load(i)
    remote.close()  # waits for the writes, made after the callers were answered
    stats = load.stats()
    assert stats.unstorable == 5
    assert stats.layer_skips == 0
    assert stats.layer_errors == 0
    assert remote.events()["writes"] == 5


def test_unstorable_values_are_counted_from_async_functions_too(url: str) -> None:
    remote = layer_at(url, namespace="abig", max_payload_bytes=100)

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), remote])
    async def load(i: int) -> str:
        return "y" * 1000

    async def main() -> None:
        for i in range(3):
            assert await load(i) == "y" * 1000
        await remote.aclose()

    asyncio.run(main())
    assert load.stats().unstorable == 3
    assert remote.events()["writes_too_large"] == 3


def test_compression_shrinks_what_redis_holds(url: str, server: RedisServer) -> None:
    value = {"rows": [(i, f"row {i}", decimal.Decimal(i)) for i in range(20_000)]}
    plain = layer_at(url, namespace="plain")
    packed = layer_at(url, namespace="packed", compression="zstd")
    key = make_key("c1")
    stored = entry(value)
    plain.set(key, stored)
    packed.set(key, stored)
    assert packed.get(key) == stored
    small = int(server.command("STRLEN", packed.redis_key(key)))
    large = int(server.command("STRLEN", plain.redis_key(key)))
    assert small < large / 2


def test_a_bomb_in_redis_is_a_counted_miss(url: str, server: RedisServer) -> None:
    layer = layer_at(url, namespace="bomb", max_payload_bytes=1024 * 1024)
    key = make_key("c1")
    redis_key = layer.redis_key(key)
    head = bytearray(encode_entry(entry(None), redis_key, layer.serializer)[:-4])
    # Keep the header and key text, replace the body by a compressed 256 MiB of zeros.
    body_start = len(head) - len(layer.serializer.dumps(None))
    data = head[:body_start]
    data[2] |= 2
    data += struct.pack(">BQ", 1, 256 * 1024 * 1024)
    data += zlib.compress(b"\0" * (256 * 1024 * 1024), 9)
    data += struct.pack("<I", zlib.crc32(bytes(data)))
    server.command("SET", redis_key, bytes(data))
    assert layer.get(key) is None
    assert layer.events()["payload_too_large"] == 1


# --- issue 15, item 12: the put script and unverified bytes -----------------------------------


def test_a_bad_checksum_blob_claiming_a_late_created_does_not_block_writes(
    url: str, server: RedisServer
) -> None:
    layer = layer_at(url, namespace="stamp")
    key = make_key("c1")
    redis_key = layer.redis_key(key)
    year_3000 = 32_503_680_000.0
    blob = bytearray(encode_entry(entry("forged", created=year_3000), redis_key, layer.serializer))
    blob[-1] ^= 0xFF  # a bad checksum: no reader would serve it
    server.command("SET", redis_key, bytes(blob))
    assert layer.get(key) is None
    stored = entry("real")
    layer.set(key, stored)  # an unfenced write: decided by `created` alone
    assert layer.get(key) == stored
    # A stored entry created later (within the clock-skew allowance) still wins, as before.
    later = entry("later", created=time.time() + 5)
    layer.set(key, later)
    layer.set(key, entry("older"))
    assert layer.get(key) == later


# --- issue 15, item 14: key-space overlaps -----------------------------------------------------


def test_clear_without_a_namespace_leaves_other_layers_keys(url: str) -> None:
    bare = layer_at(url)
    other = layer_at(url, namespace="v1")  # keys cacheward:v1:v1:{...}
    key = make_key("c1")
    kept = entry(2)
    bare.set(key, entry(1))
    other.set(key, kept)
    bare.clear()
    assert bare.get(key) is None
    assert other.get(key) == kept


def test_a_colon_in_prefix_or_namespace_is_refused() -> None:
    with pytest.raises(cw.ConfigurationError, match="prefix must not contain a colon"):
        cw.RedisLayer.from_url("redis://127.0.0.1:1/0", prefix="cg:x")
    with pytest.raises(cw.ConfigurationError, match="namespace must not contain a colon"):
        cw.RedisLayer.from_url("redis://127.0.0.1:1/0", namespace="a:b")


def test_a_signed_entry_copied_to_another_version_is_refused(url: str, server: RedisServer) -> None:
    codec = cw.MsgpackSerializer(signing_key=KEY)
    v1 = layer_at(url, namespace="svc", version=1, serializer=codec)
    v2 = layer_at(url, namespace="svc", version=2, serializer=codec)
    key = make_key("c1")
    v1.set(key, entry({"shape": "old"}))
    server.command("SET", v2.redis_key(key), server.command("GET", v1.redis_key(key)))
    assert v2.get(key) is None
    assert v2.events()["payload_wrong_key"] == 1


def test_payload_settings_are_checked_when_the_layer_is_built() -> None:
    url = "redis://127.0.0.1:1/0"  # never connected to
    with pytest.raises(cw.ConfigurationError, match="compression"):
        layer_at(url, compression="lzma")
    with pytest.raises(cw.ConfigurationError, match="max_payload_bytes"):
        layer_at(url, max_payload_bytes=0)
    with pytest.raises(cw.ConfigurationError, match="max_payload_bytes"):
        layer_at(url, max_payload_bytes="8MB")  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="compress_above"):
        layer_at(url, compress_above=-1)
    with pytest.raises(cw.ConfigurationError, match="signing_key"):
        cw.MsgpackSerializer(signing_key="a str of more than thirty-two characters")  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="key="):
        cw.PickleSerializer(key=None)  # type: ignore[arg-type]
