"""A process of the coherence tests (tests/test_coherence.py): run as a script.

``python coherence_worker.py URL SPACE MODE``, where the backend's data is the Redis key
``truth:SPACE`` (the test changes it, then invalidates), and the worker reports through Redis
keys too (``started:SPACE``), so nothing depends on reading a pipe at the right moment.

Modes:
    rebuild   one call of ``load("c1")`` whose fetch reads the data, says it started, then
              takes 1.5 s (the rebuild in flight); prints the value its caller got.
    read      one call of ``load("c1")`` (a fresh process reading); prints the value.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis

import cacheward as cw


def stack(url: str, space: str) -> tuple[Any, Any]:
    layer = cw.RedisLayer.from_url(url, socket_timeout=2.0, namespace=space)
    return layer, [cw.MemoryLayer(maxsize=100), layer]


def main() -> None:
    url, space, mode = sys.argv[1:4]
    data = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    layer, layers = stack(url, space)

    @cw.cached(ttl=60, layers=layers, namespace="config", lease_ttl=30)
    def load(customer: str) -> str:
        value = (data.get(f"truth:{space}") or b"").decode()
        data.set(f"started:{space}", "1")
        time.sleep(1.5)
        return value

    if mode in ("rebuild", "read"):
        print(load("c1"), flush=True)
    layer.close()  # waits for the background write (bounded)


if __name__ == "__main__":
    main()
