"""What every row of ``python -m benchmarks faults`` shares: the stack's settings, a row of the
table, the server a row owns, and the backend's call count (``benchmarks.faults`` and
``benchmarks._process_faults`` both use them)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

RATE, BURST = 50.0, 20.0
#: The shared-bucket rows' fallback share: one process, so its bound is (1 + SHARE)·(b + r·T).
SHARE = 0.5
DEADLINE = 1.2
TIMEOUT = 0.1
KEYS = 20
TTL = 0.3
#: The fault lasts from this share of the run to that one: longer than the deadline, so a fault
#: that can hold a caller past it has the time to.
FAULT_FROM, FAULT_TO = 0.2, 0.8


@dataclass
class Row:
    fault: str
    colour: str
    backend_calls: int = 0
    bound: float = 0.0
    max_latency: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    leaks: dict[str, int] = field(default_factory=dict)
    note: str = ""
    known: str = ""

    @property
    def defects(self) -> list[str]:
        found = []
        if self.backend_calls > self.bound:
            found.append("bound")
        if self.max_latency > DEADLINE:
            found.append("deadline")
        if any(not name.startswith("cw.") for name in self.errors):
            found.append("exceptions")
        if any(self.leaks.values()):
            found.append("leaks")
        return found

    def cells(self) -> list[str]:
        errors = ", ".join(f"{n} {c}" for n, c in sorted(self.errors.items())) or "none"
        leaks = ", ".join(f"{k} +{v}" for k, v in self.leaks.items() if v) or "none"
        verdict = "ok" if not self.defects else "BREACH: " + ", ".join(self.defects)
        if self.known:
            verdict += f" (known: {self.known})"
        return [
            self.fault,
            self.colour,
            f"{self.backend_calls} / {self.bound:.0f}",
            f"{self.max_latency:.2f} / {DEADLINE:g} s",
            errors,
            leaks,
            verdict,
        ]

    def figures(self) -> dict[str, object]:
        return {
            "fault": self.fault,
            "colour": self.colour,
            "backend_calls": self.backend_calls,
            "bound": self.bound,
            "max_latency_s": self.max_latency,
            "deadline_s": DEADLINE,
            "errors": dict(self.errors),
            "leaks": self.leaks,
            "defects": self.defects,
            "known": self.known,
            "note": self.note,
        }


@dataclass
class Env:
    """What a fault acts on: the server, the proxy in front of it."""

    server: Any
    proxy: Any
    fault_seconds: float = 1.0


class Backend:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.calls += 1


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    from tests.servers import RedisServer

    from cacheward.testing.chaos import RedisProxy

    server = RedisServer().start()
    proxy = RedisProxy(server.port).start()
    try:
        yield Env(server, proxy)
    finally:
        proxy.stop()
        server.stop()
        server.cleanup()
