"""A process of the backplane tests (tests/test_backplane.py): run as a script.

``python backplane_worker.py URL SPACE on|off SECONDS``: reads ``load("c1")`` (into its memory
layer), says so (Redis key ``ready:SPACE:<pid>``), then calls ``load("c1")`` every 10 ms for at
most SECONDS until it returns something else; prints what it returned last.
"""

from __future__ import annotations

import os
import sys
import time

import redis

import cacheward as cw


def main() -> None:
    url, space, switch, seconds = sys.argv[1:5]
    data = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    layer = cw.RedisLayer.from_url(url, socket_timeout=2.0, namespace=space)

    @cw.cached(
        ttl=60,
        layers=[cw.MemoryLayer(maxsize=100), layer],
        namespace="config",
        backplane=switch == "on",
    )
    def load(customer: str) -> str:
        return (data.get(f"truth:{space}") or b"").decode()

    first = load("c1")
    subscriber = layer.subscriber()
    deadline = time.monotonic() + 10
    while switch == "on" and not subscriber.up:
        assert time.monotonic() < deadline, "the backplane never subscribed"
        time.sleep(0.01)
    data.set(f"ready:{space}:{os.getpid()}", "1")
    value = first
    deadline = time.monotonic() + float(seconds)
    while value == first and time.monotonic() < deadline:
        time.sleep(0.01)
        value = load("c1")
    print(value, flush=True)
    layer.close()


if __name__ == "__main__":
    main()
