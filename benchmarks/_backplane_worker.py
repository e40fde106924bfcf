"""One listening process of ``python -m benchmarks coherence`` (propagation to other L1s).

``python -m benchmarks._backplane_worker URL SPACE KEYS``: holds ``k0..k<KEYS-1>`` in its memory
layer, says it is subscribed (Redis key ``ready:SPACE:<pid>``), and records the wall-clock time
at which each key is dropped by the backplane; prints them as JSON once every key was dropped
(or after 60 s).

``python -m benchmarks._backplane_worker URL SPACE KEYS --down MAX_AGE``: the channel-down variant.
``URL`` names a Redis user that may not subscribe (an ACL without channels), so this process's
channel never comes up while its reads and writes work. It caches ``k0..k<KEYS-1>`` (the backend
reads ``val:SPACE:<key>``) with ``l1_max_age=MAX_AGE``, says it is ready, then reads every key
in a loop and records when it last served ``old`` and first served ``new`` for each; prints
those times and its rechecks as JSON once every key was seen new (or after 60 s).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import redis

import cacheward as cw
from cacheward._backplane import decode


def channel_down(url: str, space: str, count: int, max_age: float) -> None:
    raw = redis.Redis.from_url(url, socket_timeout=5)
    layer = cw.RedisLayer.from_url(url, socket_timeout=2.0, namespace=space)

    @cw.cached(
        ttl=600,
        layers=[cw.MemoryLayer(maxsize=count + 10), layer],
        namespace="bench",
        l1_max_age=max_age,
    )
    def load(key: str) -> str:
        return (raw.get(f"val:{space}:{key}") or b"").decode()

    keys = [f"k{index}" for index in range(count)]
    for key in keys:
        load(key)
    raw.set(f"ready:{space}:{os.getpid()}", "1")
    seen: dict[str, float] = {}
    old_until: dict[str, float] = {}  # when each key was last served "old" (read returned)
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        for key in keys:
            if key in seen:
                continue
            value = load(key)
            if value == "new":
                seen[key] = time.time()
            else:
                old_until[key] = time.time()
        time.sleep(0.0005)
    report = {"seen": seen, "old_until": old_until, "rechecks": load.stats().rechecks}
    print(json.dumps(report), flush=True)
    layer.close()
    raw.close()


def main() -> None:
    url, space, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 5 and sys.argv[4] == "--down":
        channel_down(url, space, count, float(sys.argv[5]))
        return
    layer = cw.RedisLayer.from_url(url, socket_timeout=2.0, namespace=space)

    @cw.cached(ttl=600, layers=[cw.MemoryLayer(maxsize=count + 10), layer], namespace="bench")
    def load(key: str) -> str:
        return key

    for index in range(count):
        load(f"k{index}")
    subscriber = layer.subscriber()
    drops: dict[str, float] = {}
    dispatch = subscriber.dispatch

    def timed(data: Any) -> None:
        dispatch(data)
        message = decode(data)
        if message is not None:
            drops[str(message[2])] = time.time()

    subscriber.dispatch = timed
    deadline = time.monotonic() + 30
    while not subscriber.up and time.monotonic() < deadline:
        time.sleep(0.01)
    raw = redis.Redis.from_url(url, socket_timeout=5)
    raw.set(f"ready:{space}:{os.getpid()}", "1")
    deadline = time.monotonic() + 60
    while len(drops) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps(drops), flush=True)
    layer.close()


if __name__ == "__main__":
    main()
