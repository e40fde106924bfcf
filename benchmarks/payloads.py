"""Large payloads: L2 hit and write cost and Redis bytes vs raw redis-py, eviction, memory.

``python -m benchmarks payloads [--quick] [--json PATH]``

* **Configurations** of about 1 KB, 100 KB, 1 MB and 10 MB (``--quick``: up to 1 MB): a dict of
  rows of mixed types, as a database driver returns them (tuples of int, str, Decimal,
  tz-aware datetime, bool, None and a list of tags) plus a few top-level fields.
* **L2 hit**: cacheward's ``RedisLayer.get`` (checks the envelope, decodes exact types) vs raw
  redis-py ``GET`` + ``json.loads`` (the reference), + ``orjson.loads``, + msgspec's MessagePack
  decode. The raw paths store the configuration through ``default=str``, so they get back
  lists and strings where cacheward gets back tuples, ``Decimal`` and ``datetime``: they do less.
* **Codec**: the default serializer's ``loads`` and ``dumps`` alone (no Redis) vs ``json``, for
  the same configurations and for the 100 KB rows as records (dicts, as a dict-row cursor
  returns them).
* **Write**: ``RedisLayer.set`` (one put script) vs raw ``json.dumps`` + ``SET`` (the reference),
  orjson and msgspec, and the bytes each leaves in Redis; cacheward with zlib and zstd too.
* **Eviction curve**: a full ``MemoryLayer(maxsize=N)`` taking a new key, for N = 10k, 100k, 1M
  (``--quick``: 10k and 100k), each policy, vs ``functools.lru_cache(maxsize=N)``.
* **Memory per entry** (tracemalloc) of a cached function's memory layer, vs ``lru_cache``.
* **Round trips** of a 1 KB miss's write path (commands sent to Redis).

Timings are interleaved: each round times every contender once, in rotated order, and a
contender's figure is the median over rounds of its ratio to the reference timed in that round.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import gc
import json
import os
import shutil
import socket
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks._harness import machine, median, print_table, smoke

__all__ = ["config", "records", "run"]

PREFIX = "cacheward-bench-payloads"
TARGETS = {"1KB": 1_000, "100KB": 100_000, "1MB": 1_000_000, "10MB": 10_000_000}
_ROW_BYTES = 92  # MessagePack bytes per row of ``config`` (measured)
_TZ = datetime.timezone(datetime.timedelta(hours=1))


def config(rows: int) -> dict[str, Any]:
    """A per-customer configuration of ``rows`` rows of mixed types."""
    base = datetime.datetime(2026, 1, 1, tzinfo=_TZ)
    return {
        "customer": "c-0001",
        "updated": base,
        "id": uuid.UUID(int=rows),
        "rows": {
            f"item-{i}": (
                i,
                f"name {i} " + "x" * (i % 40),
                decimal.Decimal(i) / 100,
                base + datetime.timedelta(seconds=i),
                i % 3 == 0,
                None if i % 2 else "note",
                [f"t{i % 7}", f"u{i % 5}"],
            )
            for i in range(rows)
        },
    }


# --- a Redis to talk to ------------------------------------------------------------------------


@contextmanager
def _redis() -> Iterator[tuple[str, str]]:
    """``(url, description)``: a private redis-server if there is one, else ``REDIS_URL``."""
    binary = shutil.which("redis-server")
    if binary is None:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        yield url, f"REDIS_URL {url}"
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(200):  # bounded: up to 2 s
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        client.close()
        yield f"redis://127.0.0.1:{port}/0", f"private redis-server on port {port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


# --- interleaved rounds ------------------------------------------------------------------------


def _rounds(
    contenders: dict[str, Callable[[], object]], reference: str, *, rounds: int, reps: int
) -> dict[str, dict[str, float]]:
    """Median seconds per call and median same-round ratio to ``reference``, per contender."""
    names = list(contenders)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for fn in contenders.values():
        fn()  # warm up (scripts loaded, connections open)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        this: dict[str, float] = {}
        for name in order:
            fn = contenders[name]
            gc.disable()
            try:
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                this[name] = (time.perf_counter() - start) / reps
            finally:
                gc.enable()
        for name in names:
            seconds[name].append(this[name])
            ratios[name].append(this[name] / this[reference])
    return {
        n: {"seconds": median(seconds[n]), "ratio": median(ratios[n]), "raw": seconds[n]}
        for n in names
    }


def _fmt_s(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


# --- L2 hits and writes ------------------------------------------------------------------------


def _l2(url: str, sizes: list[str], rounds: int) -> dict[str, Any]:
    import msgspec
    import orjson
    import redis

    import cacheward as cw
    from cacheward._core.entry import Entry
    from cacheward._core.keys import CacheKey

    client = redis.Redis.from_url(url, socket_timeout=5)
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    # The 10 MB configuration is over the default max_payload_bytes (8 MiB): raised here.
    common: dict[str, Any] = {"timeout": 5, "prefix": PREFIX, "max_payload_bytes": 64 << 20}
    layers = {
        "cacheward": cw.RedisLayer.from_url(url, **common),
        "cacheward zlib": cw.RedisLayer.from_url(
            url, namespace="zlib", compression="zlib", **common
        ),
        "cacheward zstd": cw.RedisLayer.from_url(
            url, namespace="zstd", compression="zstd", **common
        ),
    }
    out: dict[str, Any] = {}
    for size in sizes:
        value = config(max(1, TARGETS[size] // _ROW_BYTES))
        key = CacheKey(size, "bench:v1:payloads", (size,), {}, ("size",))
        now = time.time()
        stored = Entry(value, now, now + 3600, now + 7200)
        raw_json = json.dumps(value, default=str)
        raw_orjson = orjson.dumps(value, default=str)
        raw_msgpack = encoder.encode(value)
        raw_keys = {n: f"{PREFIX}:raw:{n}:{size}" for n in ("json", "orjson", "msgpack")}
        client.set(raw_keys["json"], raw_json)
        client.set(raw_keys["orjson"], raw_orjson)
        client.set(raw_keys["msgpack"], raw_msgpack)
        for layer in layers.values():
            layer.set(key, stored)
            assert layer.get(key) == stored, "a round trip lost something"
        reps = 1 if TARGETS[size] >= 1_000_000 else (20 if TARGETS[size] >= 100_000 else 300)
        names = dict(raw_keys)
        hits = _rounds(
            {
                "raw GET + json.loads": lambda k=names["json"]: json.loads(client.get(k)),
                "raw GET + orjson.loads": lambda k=names["orjson"]: orjson.loads(client.get(k)),
                "raw GET + msgspec": lambda k=names["msgpack"]: decoder.decode(client.get(k)),
                **{f"{n} get": functools.partial(layer.get, key) for n, layer in layers.items()},
            },
            "raw GET + json.loads",
            rounds=rounds,
            reps=reps,
        )
        writes = _rounds(
            {
                "raw json.dumps + SET": lambda k=names["json"], v=value: client.set(
                    k, json.dumps(v, default=str)
                ),
                "raw orjson.dumps + SET": lambda k=names["orjson"], v=value: client.set(
                    k, orjson.dumps(v, default=str)
                ),
                "raw msgspec + SET": lambda k=names["msgpack"], v=value: client.set(
                    k, encoder.encode(v)
                ),
                **{
                    f"{n} set": functools.partial(layer.set, key, stored)
                    for n, layer in layers.items()
                },
            },
            "raw json.dumps + SET",
            rounds=rounds,
            reps=reps,
        )
        stored_bytes = {
            "raw json": len(raw_json.encode()),
            "raw orjson": len(raw_orjson),
            "raw msgspec": len(raw_msgpack),
            **{n: int(client.strlen(layer.redis_key(key))) for n, layer in layers.items()},
        }
        out[size] = {"hit": hits, "write": writes, "redis_bytes": stored_bytes}
        print_table(
            f"{size} configuration ({len(raw_msgpack):,} bytes of MessagePack): L2 hit",
            ["contender", "median", "x raw GET + json.loads"],
            [(n, _fmt_s(r["seconds"]), f"{r['ratio']:.2f}x") for n, r in hits.items()],
        )
        print_table(
            f"{size}: write",
            ["contender", "median", "x raw json.dumps + SET", "bytes in Redis"],
            [
                (n, _fmt_s(r["seconds"]), f"{r['ratio']:.2f}x", f"{stored_bytes[label]:,}")
                for (n, r), label in zip(writes.items(), stored_bytes, strict=True)
            ],
        )
    for layer in layers.values():
        layer.clear()
        layer.close()
    client.delete(*[f"{PREFIX}:raw:{n}:{s}" for n in ("json", "orjson", "msgpack") for s in sizes])
    client.close()
    return out


def _round_trips(url: str) -> dict[str, int]:
    """Commands sent to Redis by one 1 KB miss of a cached function (read, lease, write)."""
    import cacheward as cw

    layer = cw.RedisLayer.from_url(url, timeout=5, prefix=PREFIX, namespace="rtt")
    sent: list[str] = []
    client = layer._sync()
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **kwargs)

    client.execute_command = counting

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer])
    def load(customer: str) -> dict[str, Any]:
        return config(10)

    load("warm-up")  # scripts loaded, connection open
    sent.clear()
    load("c1")
    count = len(sent)
    commands = {name: sent.count(name) for name in sorted(set(sent))}
    client.execute_command = original
    layer.clear()
    layer.close()
    print_table("A 1 KB miss: commands sent to Redis", ["commands", "by name"], [(count, commands)])
    return {"round_trips": count, **commands}


# --- the codec alone ---------------------------------------------------------------------------


def records(rows: int) -> list[dict[str, Any]]:
    """The same rows as ``config`` as a dict-row cursor (or a JSON API) returns them."""
    names = ("id", "name", "price", "at", "active", "note", "tags")
    return [dict(zip(names, row, strict=True)) for row in config(rows)["rows"].values()]


def _codec(sizes: list[str], rounds: int) -> dict[str, Any]:
    """The default serializer's ``loads`` / ``dumps`` vs ``json`` (``default=str``) alone: no
    Redis, so the figure is the codec's, not the transport's."""
    import msgspec

    import cacheward as cw

    codec = cw.MsgpackSerializer()
    decoder, encoder = msgspec.msgpack.Decoder(), msgspec.msgpack.Encoder()
    shapes = {
        f"{size} configuration": config(max(1, TARGETS[size] // _ROW_BYTES)) for size in sizes
    }
    shapes["100KB as records"] = records(100_000 // _ROW_BYTES)
    out: dict[str, Any] = {}
    rows = []
    for name, value in shapes.items():
        packed, raw = codec.dumps(value), encoder.encode(value)
        text = json.dumps(value, default=str)
        assert codec.loads(packed) == value, "the codec lost something"
        size = len(raw)
        reps = 1 if size >= 1_000_000 else (10 if size >= 50_000 else 300)
        loads = _rounds(
            {
                "json.loads": lambda t=text: json.loads(t),
                "msgspec (plain)": lambda r=raw: decoder.decode(r),
                "cacheward loads": lambda p=packed: codec.loads(p),
            },
            "json.loads",
            rounds=rounds,
            reps=reps,
        )
        dumps = _rounds(
            {
                "json.dumps": lambda v=value: json.dumps(v, default=str),
                "cacheward dumps": lambda v=value: codec.dumps(v),
            },
            "json.dumps",
            rounds=rounds,
            reps=reps,
        )
        out[name] = {"loads": loads, "dumps": dumps, "bytes": len(packed)}
        rows.append(
            (
                name,
                f"{loads['cacheward loads']['ratio']:.2f}x",
                f"{loads['msgspec (plain)']['ratio']:.2f}x",
                f"{dumps['cacheward dumps']['ratio']:.2f}x",
                _fmt_s(loads["json.loads"]["seconds"]),
            )
        )
    print_table(
        "The codec alone (x json with default=str, which reads back strings and lists)",
        ["value", "loads", "plain msgspec loads", "dumps", "json.loads"],
        rows,
    )
    return out


# --- the memory layer --------------------------------------------------------------------------


def _eviction(sizes: list[int], misses: int) -> dict[str, Any]:
    import cacheward as cw
    from cacheward._core.entry import Entry
    from cacheward._core.keys import CacheKey

    entry = Entry(None, 0.0, 1e12, 1e12)
    out: dict[str, Any] = {}
    rows = []
    for n in sizes:
        row: dict[str, float] = {}
        for policy in ("fifo", "lru", "lfu"):
            layer = cw.MemoryLayer(n, policy=policy)  # type: ignore[arg-type]
            for i in range(n):
                layer.set(CacheKey(i, "", (), {}, ()), entry)
            keys = [CacheKey(n + i, "", (), {}, ()) for i in range(misses)]
            gc.disable()
            start = time.perf_counter()
            for key in keys:
                layer.set(key, entry)
            row[policy] = (time.perf_counter() - start) / misses
            gc.enable()
            del layer
        cache = functools.lru_cache(maxsize=n)(lambda i: None)
        for i in range(n):
            cache(i)
        gc.disable()
        start = time.perf_counter()
        for i in range(n, n + misses):
            cache(i)
        row["functools.lru_cache"] = (time.perf_counter() - start) / misses
        gc.enable()
        out[str(n)] = row
    first = out[str(sizes[0])]
    for n in sizes:
        row = out[str(n)]
        rows.append((f"{n:,}", *(f"{_fmt_s(row[p])} ({row[p] / first[p]:.2f}x)" for p in row)))
    print_table(
        "A full memory layer taking a new key (x its cost at the smallest size)",
        ["maxsize", "fifo", "lru", "lfu", "functools.lru_cache"],
        rows,
    )
    return out


def _memory(sizes: list[int]) -> dict[str, Any]:
    import cacheward as cw
    from cacheward.testing import FakeClock

    out: dict[str, Any] = {}
    for n in sizes:
        row: dict[str, float] = {}
        keys = list(range(n))
        for name in ("cacheward fifo", "cacheward lru", "lru_cache(maxsize=N)", "lru_cache(None)"):
            if name.startswith("cacheward"):
                policy = name.split()[1]

                @cw.cached(
                    ttl=60,
                    layers=[cw.MemoryLayer(maxsize=n, policy=policy)],  # type: ignore[arg-type]
                    clock=FakeClock(),
                )
                def fn(i: int) -> None:
                    return None

            else:
                size = None if name.endswith("(None)") else n
                fn = functools.lru_cache(maxsize=size)(lambda i: None)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in keys:
                fn(i)
            gc.collect()
            row[name] = (tracemalloc.get_traced_memory()[0] - before) / n
            tracemalloc.stop()
            del fn
        out[str(n)] = row
    print_table(
        "Memory per small entry (tracemalloc, bytes; keys and values preallocated)",
        ["entries", *out[str(sizes[0])]],
        [(f"{int(n):,}", *(f"{v:.0f}" for v in row.values())) for n, row in out.items()],
    )
    return out


def run(*, quick: bool) -> dict[str, object]:
    tiny = smoke()
    sizes = ["1KB"] if tiny else (["1KB", "100KB", "1MB"] if quick else list(TARGETS))
    rounds = 3 if tiny else (7 if quick else 15)
    figures: dict[str, object] = {"machine": machine(), "rounds": rounds}
    figures["codec"] = _codec(sizes, rounds)
    with _redis() as (url, where):
        print(f"Redis: {where}")
        figures["redis"] = where
        figures["l2"] = _l2(url, sizes, rounds)
        figures["miss_write"] = _round_trips(url)
    counts = (
        [2_000, 20_000] if tiny else ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    )
    figures["eviction"] = _eviction(counts, misses=2_000 if tiny else 50_000)
    figures["memory_per_entry"] = _memory([2_000] if tiny else [10_000, 100_000])
    return figures
