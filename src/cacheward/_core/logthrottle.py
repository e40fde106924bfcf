"""How many log lines one kind of event may write: a few per interval, then one summary.

During an incident the same event can happen thousands of times a second (a retry storm
against a spent budget refuses every retry); a line per event would make the logging itself
load. Each *stream* (an event kind from one source, through one layer) may write ``burst`` lines
per ``interval``; further events in that interval are only counted, and the count is written as
one summary line once the interval has ended. Events and metrics are not affected: listeners
still see every event.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["LogThrottle", "Summary"]


class Summary:
    """Events of one stream that were counted instead of logged, over ``[start, start+span)``."""

    __slots__ = ("count", "key", "span")

    def __init__(self, key: Hashable, count: int, span: float) -> None:
        self.key = key
        self.count = count
        self.span = span

    def __repr__(self) -> str:
        return f"Summary(key={self.key!r}, count={self.count}, span={self.span})"


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class LogThrottle:
    """Per-stream windows of ``interval`` seconds, each writing at most ``burst`` lines.

    Not thread-safe by itself: the logging listener calls it under its lock. Memory is bounded
    by the number of streams seen within one interval: ended windows are dropped when their
    summary (if any) is handed out.
    """

    __slots__ = ("_next_sweep", "_windows", "burst", "interval")

    def __init__(self, *, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._windows: dict[Hashable, _Window] = {}
        self._next_sweep = float("-inf")

    def admit(self, key: Hashable, now: float) -> tuple[bool, list[Summary]]:
        """Whether an event of stream ``key`` at ``now`` is logged, and the summaries now due.

        The summaries are those of windows (of any stream) that have ended with events counted
        instead of logged; each is handed out once.
        """
        due = self.sweep(now) if now >= self._next_sweep else []
        window = self._windows.get(key)
        if window is not None and now >= window.start + self.interval:
            if window.suppressed:
                due.append(Summary(key, window.suppressed, self.interval))
            window = None
        if window is None:
            window = self._windows[key] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            return True, due
        window.suppressed += 1
        return False, due

    def sweep(self, now: float) -> list[Summary]:
        """Hand out the summaries of every ended window and forget ended windows."""
        due: list[Summary] = []
        for key, window in list(self._windows.items()):
            if now >= window.start + self.interval:
                if window.suppressed:
                    due.append(Summary(key, window.suppressed, self.interval))
                del self._windows[key]
        self._next_sweep = now + self.interval
        return due

    def flush(self, now: float) -> list[Summary]:
        """Hand out every pending count, ended or not (at exit, or when asked)."""
        due = [
            Summary(key, w.suppressed, min(self.interval, max(0.0, now - w.start)))
            for key, w in self._windows.items()
            if w.suppressed
        ]
        for window in self._windows.values():
            window.suppressed = 0
        return due
