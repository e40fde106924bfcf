"""The incident's Redis: a private ``redis-server`` we can kill, or ``REDIS_URL`` behind a proxy.

* ``REDIS_URL`` set: clients connect through a loopback TCP proxy (``tests/servers.py``'s
  ``TcpProxy``) in front of it; "Redis down" stops the proxy listening and resets every open
  connection (clients see connection refused), "Redis back" heals the proxy after deleting the
  benchmark's keys, so it returns empty as a restarted Redis would. Nothing but keys under the
  benchmark's prefix is touched.
* otherwise, when ``redis-server`` is on ``PATH``: a private server on a free loopback port,
  killed with SIGKILL (by PID) for the outage and restarted empty on the same port.
* otherwise: no L2 (the report says so).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["KEY_PREFIX", "L2", "LAYER_PREFIX"]

#: Every key the benchmark writes starts with this.
KEY_PREFIX = "cacheward-bench:"
#: The same, as a layer's ``prefix=`` (which takes no colon: the layer adds its own).
LAYER_PREFIX = KEY_PREFIX.rstrip(":")


class L2:
    """The shared cache server for one benchmark run: ``start``, ``down``, ``up``, ``stop``."""

    def __init__(self, *, fault: str = "down") -> None:
        if fault not in ("down", "hung"):
            raise ValueError(f"fault must be 'down' or 'hung', got {fault!r}")
        #: ``"down"``: the server dies (connections refused); ``"hung"``: it stops answering
        #: (SIGSTOP, or a blackholing proxy) with its connections left open.
        self.fault = fault
        self.url: str | None = None
        self.mode = "absent"
        self.reason = ""
        self._server: Any = None
        self._proxy: Any = None
        self._target_url: str | None = None
        target = os.environ.get("REDIS_URL")
        if importlib.util.find_spec("redis") is None:
            self.reason = (
                "the redis package is not installed (pip install -e '.[bench]'): L2 is absent"
            )
        elif target:
            self.mode = "url"
            self._target_url = target
        elif shutil.which("redis-server"):
            self.mode = "private"
        else:
            self.reason = "no REDIS_URL and no redis-server on PATH: L2 is absent"

    def describe(self) -> str:
        """One line for the report."""
        hung = self.fault == "hung"
        if self.mode == "private":
            what = "SIGSTOP; back: SIGCONT, emptied" if hung else "SIGKILL; back: restarted empty"
            return f"private redis-server on loopback (outage: {what})"
        if self.mode == "url":
            what = "blackholed" if hung else "refused + reset"
            return f"REDIS_URL through a loopback proxy (outage: {what}; back: empty)"
        return self.reason

    def start(self) -> None:
        """Start the server (or the proxy); ``url`` is then what clients use."""
        if self.mode == "private":
            from tests.servers import RedisServer

            self._server = RedisServer(args=["--maxmemory", "1gb"]).start()
            self.url = self._server.url
        elif self.mode == "url":
            from tests.servers import TcpProxy

            assert self._target_url is not None
            parts = urlsplit(self._target_url)
            self._proxy = TcpProxy(
                parts.port or 6379, target_host=parts.hostname or "127.0.0.1"
            ).start()
            netloc = f"127.0.0.1:{self._proxy.port}"
            if parts.username or parts.password:
                netloc = f"{parts.username or ''}:{parts.password or ''}@{netloc}"
            self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def flush(self) -> None:
        """Delete every benchmark key (between the two stacks' runs)."""
        if self.mode == "private":
            self._server.flushall()
        elif self.mode == "url":
            import redis

            assert self._target_url is not None
            client = redis.Redis.from_url(self._target_url, socket_timeout=5)
            try:
                batch = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
                for i in range(0, len(batch), 500):
                    client.delete(*batch[i : i + 500])
            finally:
                client.close()

    def down(self) -> None:
        """The outage: Redis disappears (connections refused) or hangs."""
        if self.mode == "private":
            if self.fault == "hung":
                self._server.pause()
            else:
                self._server.kill()
        elif self.mode == "url":
            if self.fault == "hung":
                self._proxy.blackhole()
            else:
                self._proxy.refuse()

    def up(self) -> None:
        """Redis comes back, empty."""
        if self.mode == "private":
            if self.fault == "hung":
                self._server.resume()
                self._server.flushall()
            else:
                self._server.restart()
        elif self.mode == "url":
            self.flush()
            self._proxy.heal()

    def stop(self) -> None:
        """Stop the private server or the proxy (and delete the benchmark's keys)."""
        if self._server is not None:
            self._server.stop()
            self._server.cleanup()
            self._server = None
        if self._proxy is not None:
            try:
                self.flush()
            finally:
                self._proxy.stop()
                self._proxy = None
