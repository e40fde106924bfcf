"""One listening process of ``python -m benchmarks coherence`` (propagation to other L1s).

``python -m benchmarks._backplane_worker URL SPACE KEYS``: holds ``k0..k<KEYS-1>`` in its memory
layer, says it is subscribed (Redis key ``ready:SPACE:<pid>``), and records the wall-clock time
at which each key is dropped by the backplane; prints them as JSON once every key was dropped
(or after 60 s).
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


def main() -> None:
    url, space, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
