"""Events: every decision cacheward makes, for listeners (metrics, logs, traces).

``cacheward.contrib`` holds ready-made listeners for Prometheus and OpenTelemetry; see
docs/observability.md. The everyday ones (``listen``, ``listening``, ``EventKind``) are also
re-exported at the top level.
"""

from __future__ import annotations

from cacheward._events import (
    Event,
    EventKind,
    Listener,
    LoggingListener,
    emit,
    listen,
    listener_errors,
    listening,
    unlisten,
)

__all__ = [
    "Event",
    "EventKind",
    "Listener",
    "LoggingListener",
    "emit",
    "listen",
    "listener_errors",
    "listening",
    "unlisten",
]
