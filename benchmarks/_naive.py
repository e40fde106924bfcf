"""The naive stack: the caching code a competent team writes today, with the defaults people use.

Read path of ``NaiveStack.get(customer)``:

1. **L1, in-process:** ``cachetools.cached(TTLCache(maxsize=4096, ttl=TTL), lock=Lock())`` --
   the decorator as cachetools documents it for threaded code. The lock guards the cache, not
   the call: concurrent misses for one key all run the loader (cachetools' ``condition=`` would
   coalesce them, but it is not the default and rarely used).
2. **L2, Redis:** ``redis.Redis.from_url(url)`` with redis-py's defaults (no socket timeout, the
   default retry policy: on these machines a refused connection takes about 4 s to fail). A Redis
   error is logged-and-ignored -- the cache "fails open" to the database, which is what every
   tutorial recommends so that a cache outage is "not an outage".
3. **Rebuild:** ``tenacity.retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=1,
   min=4, max=10), reraise=True)`` -- tenacity's README example, bounded to three attempts --
   around a loop that reads the configuration page by page with ``LIMIT page OFFSET n`` until a
   short page. Any failure (a statement timeout on page 9 of 12) retries the whole rebuild from
   page one.
4. The payload is written back to Redis with ``SET key value EX ttl`` (errors ignored) and
   returned; cachetools stores it in L1.

Every setting is a library default or the library's own documented example; nothing is
degraded on purpose. A sensitivity variant (``redis_timeouts=True``; the benchmark's
``CACHEWARD_BENCH_NAIVE_REDIS=timeouts``) gives redis-py 0.25 s socket and connect timeouts and
no retries, so that a Redis outage costs the naive stack milliseconds instead of seconds.

The payload is a string: ``"<built_at>|<json>"`` so that the benchmark can
tell the age of a served value without parsing it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import cachetools
import tenacity

from benchmarks._db import Store

__all__ = ["NAIVE_CONFIG", "NaiveStack"]

#: The naive stack's configuration, as the report prints it.
NAIVE_CONFIG = {
    "l1": "cachetools.cached(TTLCache(maxsize=4096, ttl=TTL), lock=threading.Lock())",
    "l2": "redis.Redis.from_url(url): redis-py defaults (no socket timeout, default retry)",
    "on_redis_error": "ignore, read the database (fail open)",
    "retry": "tenacity.retry(stop=stop_after_attempt(3), "
    "wait=wait_exponential(multiplier=1, min=4, max=10), reraise=True)",
    "pagination": "LIMIT page_size OFFSET n until a short page; a failure restarts at page 1",
    "redis_write": "SET key payload EX ttl",
}


class NaiveStack:
    """The naive read path for one worker process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float,
        page_size: int,
        redis_url: str | None,
        key_prefix: str,
        redis_timeouts: bool = False,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.page_size = page_size
        self.key_prefix = key_prefix
        self.redis: Any = None
        if redis_url is not None:
            import redis

            if redis_timeouts:
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                # The sensitivity variant: what a team that read DESIGN.md's Redis facts sets.
                self.redis = redis.Redis.from_url(
                    redis_url,
                    socket_timeout=0.25,
                    socket_connect_timeout=0.25,
                    retry=Retry(NoBackoff(), 0),
                )
            else:
                self.redis = redis.Redis.from_url(redis_url)
        self.cache: cachetools.TTLCache[Any, str] = cachetools.TTLCache(maxsize=4096, ttl=ttl)
        self.lock = threading.Lock()
        self.redis_errors = 0
        self.rebuilds = 0
        self.rebuild_attempts = 0
        self.get = cachetools.cached(self.cache, lock=self.lock)(self._load)
        self._rebuild = tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_exponential(multiplier=1, min=4, max=10),
            reraise=True,
        )(self._rebuild_once)

    def _load(self, customer: int) -> str:
        key = f"{self.key_prefix}naive:config:{customer}"
        if self.redis is not None:
            try:
                raw = self.redis.get(key)
            except Exception:  # fail open, as the tutorials say
                self.redis_errors += 1
            else:
                if raw is not None:
                    return str(raw.decode())
        payload = self._rebuild(customer)
        self.rebuilds += 1
        if self.redis is not None:
            try:
                self.redis.set(key, payload, ex=max(1, round(self.ttl)))
            except Exception:
                self.redis_errors += 1
        return payload

    def _rebuild_once(self, customer: int) -> str:
        self.rebuild_attempts += 1
        items: list[tuple[int, str, str]] = []
        offset = 0
        while True:
            rows = self.store.offset_page(customer, offset, self.page_size)
            items.extend(rows)
            if len(rows) < self.page_size:
                break
            offset += self.page_size
        return assemble(customer, items)

    def flush(self) -> None:
        """Lose the in-process cache (a deploy, a restart, an OOM kill)."""
        with self.lock:
            self.cache.clear()

    def close(self) -> None:
        """Close the Redis client."""
        if self.redis is not None:
            self.redis.close()

    def stats(self) -> dict[str, int]:
        """What this process's naive stack counted."""
        return {
            "rebuilds": self.rebuilds,
            "rebuild_attempts": self.rebuild_attempts,
            "redis_errors": self.redis_errors,
        }


def assemble(customer: int, items: list[Any]) -> str:
    """The configuration payload both stacks serve: ``"<built_at>|<json>"``."""
    body = json.dumps({"customer": customer, "items": items}, separators=(",", ":"))
    return f"{time.time():.3f}|{body}"


def built_at(payload: str) -> float:
    """When a payload from :func:`assemble` was built."""
    return float(payload[: payload.index("|")])
