"""A process of the randomized coherence test (tests/test_coherence_random.py): run as a script.

``python chaos_worker.py CACHE_URL DATA_URL RUN OPTION``. The cached function ``load(k)``
reads key ``k``'s version from the data store (``DATA_URL``, a Redis the test never faults:
the "database"), takes a few milliseconds (so rebuilds race everything else), and returns
it. Its stack is a memory layer above a ``RedisLayer`` on ``CACHE_URL`` (the Redis the test
kills, pauses and flushes), with tags ``g<k % 3>``.

Commands come as JSON lines on stdin and are run each in a thread (so calls overlap); each
reply is one JSON line ``{"id": ..., "ok": ..., "value": ...}`` on stdout:

    read k · invalidate k · set k v · tag g · settled · quit

``settled`` says whether this process has nothing pending for the shared layer and its
backplane channel is subscribed.

Option ``off``: the mechanism under test switched off — no backplane, so this process's
memory layer never hears of other processes' invalidations (the sibling's failure).
"""

from __future__ import annotations

import concurrent.futures
import faulthandler
import json
import random
import signal
import sys
import threading
import time
from typing import Any

import redis

import cacheward as cw
from cacheward._pending import book_of

GROUPS = 3


def main() -> None:
    # The test asks for every thread's stack (SIGUSR1) when a command gets no reply.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cache_url, data_url, run, option = sys.argv[1:5]
    data = redis.Redis.from_url(data_url, socket_timeout=5, socket_connect_timeout=5)
    layer = cw.RedisLayer.from_url(cache_url, socket_timeout=0.2, namespace=run, breaker_reset=0.2)
    rng = random.Random()

    @cw.cached(
        ttl=60,
        layers=[cw.MemoryLayer(maxsize=1000), layer],
        namespace="chaos",
        tags=lambda k: [f"g{k % GROUPS}"],
        lease_ttl=3,
        wait_timeout=3,
        l1_max_age=1.0,
        backoff=0.01,
        backoff_max=0.05,
        backplane=option != "off",
    )
    def load(k: int) -> int:
        version = int(data.get(f"{run}:truth:{k}") or 0)
        time.sleep(rng.uniform(0, 0.02))
        return version

    out = threading.Lock()

    def reply(ident: Any, ok: bool, value: Any) -> None:
        with out:
            sys.stdout.write(json.dumps({"id": ident, "ok": ok, "value": value}) + "\n")
            sys.stdout.flush()

    def settled() -> bool:
        subscriber = layer.subscriber()
        return not book_of(layer) and (option == "off" or bool(subscriber.up))

    def do(command: dict[str, Any]) -> None:
        op = command["op"]
        try:
            if op == "read":
                value: Any = load(command["key"])
            elif op == "invalidate":
                value = bool(load.invalidate(command["key"]))
            elif op == "set":
                value = bool(load.set(command["value"], command["key"]))
            elif op == "tag":
                value = bool(cw.invalidate_tags(f"g{command['group']}", layers=[layer]))
            elif op == "settled":
                value = settled()
            else:
                value = None
        except Exception as exc:
            reply(command["id"], False, f"{type(exc).__name__}: {exc}")
        else:
            reply(command["id"], True, value)

    pool = concurrent.futures.ThreadPoolExecutor(16)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        pool.submit(do, command)
    pool.shutdown(wait=True)
    reply("quit", True, None)
    layer.close()


if __name__ == "__main__":
    main()
