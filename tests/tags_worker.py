"""A process of the tag tests (tests/test_tags.py): run as a script.

``python tags_worker.py URL SPACE MODE [OPTION]``. The backend's data is the Redis key
``truth:SPACE``; the worker reports through Redis keys (``started:SPACE``, ``ready:SPACE``,
``seen:SPACE``), so nothing depends on reading a pipe at the right moment.

Modes:
    rebuild   one call of ``users("c1")`` whose fetch reads the data, says it started, then
              takes 1.5 s (a rebuild in flight); prints the value its caller got.
    read      one call of ``users("c1")`` and one of ``invoices("c1")`` (a fresh process);
              prints both.
    serve     fills its memory layer with ``users("c1")``, says it is ready, then calls
              ``users("c1")`` every 10 ms and writes what it got to ``seen:SPACE`` until
              ``stop:SPACE`` appears (at most 60 s).

Options (each switches mechanisms off, for the siblings):
    nomarks      the layer checks no marks (reads and writes ignore tags and cache_clear).
    nobackplane  ``backplane=False``: other processes' invalidations are not heard.
    off          both.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis

import cacheward as cw


class NoMarksLayer(cw.RedisLayer):
    """The mechanism switched off: entries are never checked against their tags' marks."""

    __slots__ = ()

    def _marks(self, key: Any) -> tuple[str, ...]:
        return ()


def make(url: str, space: str, option: str = "", **layer_settings: Any) -> Any:
    kind = NoMarksLayer if option in ("nomarks", "off") else cw.RedisLayer
    layer_settings.setdefault("socket_timeout", 2.0)
    layer = kind.from_url(url, namespace=space, **layer_settings)
    data = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    slow = [False]
    settings: dict[str, Any] = {
        "ttl": 60,
        "lease_ttl": 30,
        "tags": lambda customer: [f"customer:{customer}"],
        "backplane": option not in ("nobackplane", "off"),
    }

    @cw.cached(layers=[cw.MemoryLayer(maxsize=100), layer], namespace="users", **settings)
    def users(customer: str) -> str:
        value = (data.get(f"truth:{space}") or b"").decode()
        if slow[0]:
            data.set(f"started:{space}", "1")
            time.sleep(1.5)
        return f"users:{value}"

    @cw.cached(layers=[cw.MemoryLayer(maxsize=100), layer], namespace="invoices", **settings)
    def invoices(customer: str) -> str:
        return f"invoices:{(data.get(f'truth:{space}') or b'').decode()}"

    return layer, data, slow, users, invoices


def main() -> None:
    url, space, mode = sys.argv[1:4]
    option = sys.argv[4] if len(sys.argv) > 4 else ""
    layer, data, slow, users, invoices = make(url, space, option)
    if mode == "rebuild":
        slow[0] = True
        print(users("c1"), flush=True)
    elif mode == "read":
        print(users("c1"), invoices("c1"), flush=True)
    elif mode == "serve":
        users("c1")
        subscriber = layer.subscriber()
        deadline = time.monotonic() + 10
        while (
            option not in ("nobackplane", "off")
            and not subscriber.up
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)  # the channel is subscribed: announcements are heard from now
        data.set(f"ready:{space}", "1")
        deadline = time.monotonic() + 60
        while data.get(f"stop:{space}") is None and time.monotonic() < deadline:
            data.set(f"seen:{space}", users("c1"))
            time.sleep(0.01)
    layer.close()  # waits for the background writes (bounded)


if __name__ == "__main__":
    main()
