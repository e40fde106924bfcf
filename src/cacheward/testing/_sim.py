"""A deterministic simulation harness for guarded functions (re-exported by ``cacheward.testing``).

The pieces drive the *real* decorators; only time, the cache layers and the backend are scripted:

- :class:`SimClock` and :func:`run_simulated`: an event loop whose time is a
  :class:`~cacheward.testing.FakeClock`. When every task waits, the loop jumps the clock to the
  next timer instead of sleeping, so ``asyncio.sleep``, ``asyncio.wait_for`` and every sleep on
  the clock take no real time while tasks still interleave exactly as they would in real time.
- :class:`ScriptedLayer`: a remote cache layer that can be up, down, hung, corrupt or evicting,
  and flushed at any moment.
- :class:`ScriptedBackend`: a backend that succeeds, fails, raises or is slow on command, and
  records every attempt with its clock time, key and the concurrency it ran at.
- :func:`run_tasks`, :func:`run_sequence` and :func:`run_threads`: many callers (asyncio tasks
  at scripted times, one thread at scripted times, or real threads at once), each recorded as
  a :class:`CallRecord`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import selectors
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Literal, TypeVar

from cacheward._clock import Clock
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward.testing._fakes import FakeClock

__all__ = [
    "Attempt",
    "CallRecord",
    "CapacityBackend",
    "LayerMode",
    "ManualExecutor",
    "Outcome",
    "ScriptedBackend",
    "ScriptedLayer",
    "SimClock",
    "run_sequence",
    "run_simulated",
    "run_tasks",
    "run_threads",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Virtual time for asyncio


class SimClock(FakeClock):
    """A :class:`~cacheward.testing.FakeClock` that cooperates with :func:`run_simulated`.

    Inside :func:`run_simulated` (on this clock), :meth:`asleep` suspends the task until the
    simulated time has come, as a real sleep would, so concurrent tasks see each other's
    sleeps in the right order; the loop jumps the clock forward whenever every task waits.
    Elsewhere it behaves exactly like ``FakeClock`` (sleeps advance the clock at once).
    ``sleep`` (the blocking one) always advances the clock at once.
    """

    __slots__ = ()

    async def asleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(loop, _SimLoop) and loop.sim_clock is self:
            self.sleeps.append(seconds)
            await asyncio.sleep(max(0.0, seconds))
        else:
            await super().asleep(seconds)


class _SimSelector(selectors.DefaultSelector):
    """A selector that, when nothing is ready, advances the clock instead of blocking."""

    def __init__(self, clock: FakeClock, idle_limit: float) -> None:
        super().__init__()
        self.clock = clock
        self.idle_limit = idle_limit
        self.idle = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        events: list[tuple[Any, int]] = super().select(0)
        if events:
            self.idle = 0.0
            return events
        if timeout is None:
            # No timer at all: only another thread can wake the loop (call_soon_threadsafe).
            # Wait for it in short real slices, and give up on a deadlock.
            events = super().select(0.002)
            if events:
                self.idle = 0.0
                return events
            self.idle += 0.002
            if self.idle > self.idle_limit:
                raise RuntimeError(
                    "simulation deadlock: every task waits and no timer is scheduled"
                )
            return events
        if timeout > 0:
            self.clock.advance(timeout)
        return events


class _SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock, idle_limit: float) -> None:
        super().__init__(selector=_SimSelector(clock, idle_limit))
        self.sim_clock = clock

    def time(self) -> float:
        return self.sim_clock.monotonic()


def run_simulated(main: Coroutine[Any, Any, T], *, clock: FakeClock, idle_limit: float = 5.0) -> T:
    """Run ``main`` on an event loop whose time is ``clock``'s monotonic time.

    Timers (``asyncio.sleep``, ``asyncio.wait_for``, ``loop.call_later``, and
    :meth:`SimClock.asleep`) fire at their simulated time; whenever every task waits, the loop
    advances ``clock`` to the next timer at once. A run of hours of simulated time with
    thousands of tasks takes milliseconds.

    Args:
        main: the coroutine to run.
        clock: the clock that is the loop's time (a :class:`SimClock` for sleeps on the clock
            to interleave correctly).
        idle_limit: real seconds to wait, when no timer is scheduled and no task can run, for
            another thread to wake the loop before raising :class:`RuntimeError` (deadlock).

    Returns:
        What ``main`` returns.
    """
    loop = _SimLoop(clock, idle_limit)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


# --------------------------------------------------------------------------------------------
# Scripted cache layers

#: What a :class:`ScriptedLayer` does: ``"up"`` works; ``"down"`` raises ``ConnectionError`` at
#: once; ``"hung"`` waits its ``timeout`` on the clock, then raises ``TimeoutError``;
#: ``"corrupt"`` answers reads with bytes that are not an entry (writes work); ``"evicting"``
#: keeps only its ``capacity`` most recent writes.
LayerMode = Literal["up", "down", "hung", "corrupt", "evicting"]

_MODES = ("up", "down", "hung", "corrupt", "evicting")


class ScriptedLayer:
    """A remote cache layer whose health you script (sync and async methods alike).

    It stores entries by ``key.text`` and never expires them itself: a layer may hand back an
    entry past its limits, and cacheward must not serve it. Every operation is recorded in
    :attr:`ops` as ``(monotonic time, operation, key text, result)``.

    Args:
        name: the layer's name.
        clock: the clock a hung operation waits on.
        timeout: how long a hung operation waits before raising ``TimeoutError`` (the client
            timeout you would configure on a real remote layer).
        capacity: how many entries an ``"evicting"`` layer keeps.
        mode: the initial mode.
    """

    local = False

    def __init__(
        self,
        name: str = "scripted",
        *,
        clock: Clock,
        timeout: float = 0.5,
        capacity: int = 1,
        mode: LayerMode = "up",
    ) -> None:
        self.name = name
        self.clock = clock
        self.timeout = timeout
        self.capacity = capacity
        self.mode: LayerMode = "up"
        self.set_mode(mode)
        #: The stored entries, by key text.
        self.entries: dict[str, Entry] = {}
        #: Every operation: ``(monotonic time, operation, key text or "", result)``.
        self.ops: list[tuple[float, str, str, str]] = []

    def set_mode(self, mode: LayerMode) -> None:
        """Switch to ``mode`` (see :data:`LayerMode`)."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode

    def flush(self) -> None:
        """Lose every entry at once (a restart or ``FLUSHALL``), whatever the mode."""
        self.entries.clear()
        self.ops.append((self.clock.monotonic(), "flush", "", "ok"))

    # -- the shared logic: returns ("raise", error) or ("ok", result), after any hang

    def _fault(self, op: str, key: str) -> BaseException | None:
        if self.mode == "down":
            self.ops.append((self.clock.monotonic(), op, key, "down"))
            return ConnectionError(f"{self.name}: connection refused ({op})")
        return None

    def _hung_error(self, op: str, key: str) -> TimeoutError:
        self.ops.append((self.clock.monotonic(), op, key, "timeout"))
        return TimeoutError(f"{self.name}: {op} timed out after {self.timeout}s")

    def _get(self, key: CacheKey) -> Any:
        found = self.entries.get(key.text)
        if self.mode == "corrupt" and found is not None:
            self.ops.append((self.clock.monotonic(), "get", key.text, "corrupt"))
            return b"\x00\xffnot an entry"
        self.ops.append((self.clock.monotonic(), "get", key.text, "hit" if found else "miss"))
        return found

    def _set(self, key: CacheKey, entry: Entry) -> None:
        self.entries.pop(key.text, None)
        self.entries[key.text] = entry
        if self.mode == "evicting":
            while len(self.entries) > self.capacity:
                del self.entries[next(iter(self.entries))]
        self.ops.append((self.clock.monotonic(), "set", key.text, "ok"))

    def _delete(self, key: CacheKey) -> None:
        self.entries.pop(key.text, None)
        self.ops.append((self.clock.monotonic(), "delete", key.text, "ok"))

    def _run(self, op: str, key: CacheKey | None, action: Callable[[], T]) -> T:
        text = "" if key is None else key.text
        error = self._fault(op, text)
        if error is not None:
            raise error
        if self.mode == "hung":
            self.clock.sleep(self.timeout)
            raise self._hung_error(op, text)
        return action()

    async def _arun(self, op: str, key: CacheKey | None, action: Callable[[], T]) -> T:
        text = "" if key is None else key.text
        error = self._fault(op, text)
        if error is not None:
            raise error
        if self.mode == "hung":
            await self.clock.asleep(self.timeout)
            raise self._hung_error(op, text)
        return action()

    # -- the Layer protocol

    def get(self, key: CacheKey) -> Entry | None:
        """Read ``key`` (see the class docs for what each mode does)."""
        result: Entry | None = self._run("get", key, lambda: self._get(key))
        return result

    def set(self, key: CacheKey, entry: Entry) -> None:
        """Write ``key``."""
        self._run("set", key, lambda: self._set(key, entry))

    def delete(self, key: CacheKey) -> None:
        """Delete ``key``."""
        self._run("delete", key, lambda: self._delete(key))

    def clear(self) -> None:
        """Delete every entry."""
        self._run("clear", None, self.entries.clear)

    # -- the AsyncLayer protocol

    async def aget(self, key: CacheKey) -> Entry | None:
        """Read ``key``."""
        result: Entry | None = await self._arun("get", key, lambda: self._get(key))
        return result

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        """Write ``key``."""
        await self._arun("set", key, lambda: self._set(key, entry))

    async def adelete(self, key: CacheKey) -> None:
        """Delete ``key``."""
        await self._arun("delete", key, lambda: self._delete(key))

    async def aclear(self) -> None:
        """Delete every entry."""
        await self._arun("clear", None, self.entries.clear)

    def __repr__(self) -> str:
        return f"ScriptedLayer({self.name!r}, mode={self.mode!r}, entries={len(self.entries)})"


# --------------------------------------------------------------------------------------------
# The scripted backend


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one backend attempt does.

    Attributes:
        kind: ``"ok"`` returns ``[key, attempt number]``; ``"fail"`` raises
            ``ConnectionError`` (a transient error that ``cw.retry`` retries); ``"raise"``
            raises ``ValueError`` (an error it does not retry).
        delay: seconds the attempt takes on the clock before it answers.
    """

    kind: Literal["ok", "fail", "raise"] = "ok"
    delay: float = 0.0


@dataclasses.dataclass
class Attempt:
    """One backend attempt, as the backend saw it (times are the clock's monotonic time).

    Attributes:
        number: the attempt's number, from 1, across all keys.
        key: the key argument.
        start: when it started.
        end: when it answered (``None`` while running).
        outcome: what it did.
        concurrent: attempts of the same key running when it started, itself included.
    """

    number: int
    key: Any
    start: float
    outcome: Outcome
    concurrent: int
    end: float | None = None


class ScriptedBackend:
    """A backend that does what its script says, and records every attempt.

    Call it as ``backend(key)`` from sync code or ``await backend.acall(key)`` from async code
    (wrap either in the decorators under test). A successful attempt returns
    ``[key, attempt number]``, so a test can tell which attempt produced a value and for which
    key.

    Args:
        clock: the clock slow attempts wait on and attempts are stamped with.
        script: the outcome of each attempt: one :class:`Outcome` for all, or a function of
            ``(key, attempt number, monotonic time)``. Change it with :attr:`script` at any time.
        first_number: the number of the first attempt.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        script: Outcome | Callable[[Any, int, float], Outcome] = Outcome(),
        first_number: int = 1,
    ) -> None:
        self.clock = clock
        self.script = script
        #: The number of the first attempt (give backends of different processes disjoint
        #: ranges, so a value tells which one produced it).
        self.first_number = first_number
        #: Every attempt, in start order.
        self.attempts: list[Attempt] = []
        #: Attempts running now, per key.
        self.in_flight: dict[Any, int] = {}
        #: The most attempts of one key ever running at once.
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def _begin(self, key: Any) -> Attempt:
        with self._lock:
            number = len(self.attempts) + self.first_number
            now = self.clock.monotonic()
            script = self.script
            outcome = script if isinstance(script, Outcome) else script(key, number, now)
            marker = (type(key), key)
            running = self.in_flight[marker] = self.in_flight.get(marker, 0) + 1
            self.max_in_flight = max(self.max_in_flight, running)
            attempt = Attempt(number, key, now, outcome, running)
            self.attempts.append(attempt)
            return attempt

    def _finish(self, attempt: Attempt) -> None:
        with self._lock:
            attempt.end = self.clock.monotonic()
            self.in_flight[(type(attempt.key), attempt.key)] -= 1

    def _answer(self, attempt: Attempt) -> list[Any]:
        self._finish(attempt)
        kind = attempt.outcome.kind
        if kind == "fail":
            raise ConnectionError(f"backend failed attempt {attempt.number} ({attempt.key!r})")
        if kind == "raise":
            raise ValueError(f"backend rejected attempt {attempt.number} ({attempt.key!r})")
        return [attempt.key, attempt.number]

    def __call__(self, key: Any) -> list[Any]:
        attempt = self._begin(key)
        try:
            if attempt.outcome.delay > 0:
                self.clock.sleep(attempt.outcome.delay)
        except BaseException:
            self._finish(attempt)
            raise
        return self._answer(attempt)

    async def acall(self, key: Any) -> list[Any]:
        """The async backend: same script, sleeps on the clock without blocking the loop."""
        attempt = self._begin(key)
        try:
            if attempt.outcome.delay > 0:
                await self.clock.asleep(attempt.outcome.delay)
        except BaseException:  # cancelled: the attempt ends without an answer
            self._finish(attempt)
            raise
        return self._answer(attempt)

    def value_of(self, number: int) -> Attempt | None:
        """The attempt that produced the value ``[key, number]`` (``None``: not this backend)."""
        index = number - self.first_number
        return self.attempts[index] if 0 <= index < len(self.attempts) else None


class CapacityBackend:
    """A backend with a capacity: flat latency up to ``capacity(t)`` concurrent attempts,
    proportional past it, and a timeout past twice it (a database, roughly).

    An attempt that starts at time ``t`` with ``n`` attempts running (itself and the others
    starting at the same instant included) takes
    ``base * max(1, n / capacity(t))`` seconds and succeeds, or, when ``n > 2 * capacity(t)``,
    takes ``timeout`` seconds and raises ``TimeoutError`` (a statement timeout). Use it to
    check that an :class:`~cacheward.AdaptiveLimit` finds and follows the capacity.

    Args:
        clock: the clock attempts wait on and are stamped with.
        capacity: the capacity (concurrent attempts), a number or a function of the clock's
            monotonic time.
        base: the latency at or under capacity (seconds).
        timeout: how long an attempt past twice the capacity takes to fail (seconds).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        capacity: float | Callable[[float], float],
        base: float = 0.05,
        timeout: float = 1.0,
    ) -> None:
        self.clock = clock
        self.capacity = capacity
        self.base = base
        self.timeout = timeout
        #: Attempts running now.
        self.in_flight = 0
        #: Every attempt: ``(start, concurrent attempts at start, capacity at start, timed out)``.
        self.attempts: list[tuple[float, int, float, bool]] = []

    def capacity_at(self, now: float) -> float:
        """The capacity at monotonic time ``now``."""
        capacity = self.capacity
        return float(capacity(now) if callable(capacity) else capacity)

    async def acall(self, key: Any = None) -> Any:
        """One attempt (``async``); returns ``key``."""
        now = self.clock.monotonic()
        capacity = self.capacity_at(now)
        self.in_flight += 1
        try:
            # Attempts that start at the same instant share the backend from the start (as a
            # processor-sharing server would): let them all arrive before deciding.
            await asyncio.sleep(0)
            running = self.in_flight
            overloaded = running > 2.0 * capacity
            self.attempts.append((now, running, capacity, overloaded))
            if overloaded:
                await self.clock.asleep(self.timeout)
                raise TimeoutError(f"statement timeout: {running} running, capacity {capacity:g}")
            await self.clock.asleep(self.base * max(1.0, running / capacity))
        finally:
            self.in_flight -= 1
        return key


class ManualExecutor(concurrent.futures.Executor):
    """An executor that queues submitted calls until :meth:`run_pending` runs them.

    Pass it as ``refresh_executor=`` to see a background refresh happen *after* the call that
    started it has returned (as with a thread pool), at a moment the test chooses.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        #: How many calls were submitted.
        self.submitted = 0

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        self.submitted += 1
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.append((lambda: fn(*args, **kwargs), future))
        return future

    def run_pending(self) -> int:
        """Run the queued calls (and any they submit) in this thread; returns how many ran."""
        ran = 0
        while self._queue:
            call, future = self._queue.pop(0)
            ran += 1
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)
        return ran


# --------------------------------------------------------------------------------------------
# Callers


@dataclasses.dataclass
class CallRecord:
    """One caller's call (times are the clock's monotonic time).

    Attributes:
        args: the arguments it called with.
        start: when it called.
        end: when it got its answer (``None`` if it never did).
        value: what it got, if a value.
        error: what it got, if an exception.
    """

    args: tuple[Any, ...]
    start: float
    end: float | None = None
    value: Any = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        """Whether the call answered (a value or an error)."""
        return self.end is not None


async def run_tasks(
    fn: Callable[..., Awaitable[Any]],
    calls: Iterable[tuple[float, tuple[Any, ...]]],
    *,
    clock: Clock,
    events: Iterable[tuple[float, Callable[[], object]]] = (),
    horizon: float | None = None,
) -> list[CallRecord]:
    """Call ``fn`` from one asyncio task per call, each at its own time; wait for all.

    Run it under :func:`run_simulated` so the times are simulated.

    Args:
        fn: the ``async def`` function under test.
        calls: ``(seconds from now, args)`` per caller.
        clock: the clock the records are stamped with.
        events: ``(seconds from now, action)``: actions run at their time (faults, for example);
            an action runs before the callers that arrive at the same moment.
        horizon: if given, the simulated seconds after which callers still waiting are
            cancelled and left unanswered (``end`` is ``None``): a hang shows up as such a
            record instead of a test that never ends.

    Returns:
        One record per call, in the order given.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    records: list[CallRecord] = []

    for at, action in events:
        loop.call_at(t0 + max(0.0, at), action)

    async def one(at: float, record: CallRecord) -> None:
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Let actions and earlier callers due at this instant go first.
        await asyncio.sleep(0)
        record.start = clock.monotonic()
        try:
            record.value = await fn(*record.args)
        except Exception as exc:
            record.error = exc
        record.end = clock.monotonic()

    tasks: list[asyncio.Future[None]] = []
    for at, args in calls:
        record = CallRecord(tuple(args), start=float("nan"))
        records.append(record)
        tasks.append(asyncio.ensure_future(one(max(0.0, at), record)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=horizon)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    return records


def run_sequence(
    fn: Callable[..., Any],
    calls: Iterable[tuple[float, tuple[Any, ...]]],
    *,
    clock: FakeClock,
    events: Iterable[tuple[float, Callable[[], object]]] = (),
    after_call: Callable[[], object] | None = None,
) -> list[CallRecord]:
    """Call ``fn`` once per call, in one thread, in time order, advancing ``clock`` between.

    Each caller starts at its time or when the previous one answered, whichever is later (a
    slow call or a sleep on the clock moves time on). Events due before a call run first.

    Args:
        fn: the function under test.
        calls: ``(seconds from now, args)`` per caller.
        clock: the clock to advance.
        events: ``(seconds from now, action)`` run at their time.
        after_call: run after each call has been recorded (for example
            :meth:`ManualExecutor.run_pending`, to run the background refreshes a call started
            after it returned, as a thread pool would).

    Returns:
        One record per call, in time order.
    """
    t0 = clock.monotonic()
    timeline: list[tuple[float, int, int, Any]] = []
    for index, (at, action) in enumerate(events):
        timeline.append((max(0.0, at), 0, index, action))
    for index, (at, args) in enumerate(calls):
        timeline.append((max(0.0, at), 1, index, tuple(args)))
    timeline.sort(key=lambda item: item[:3])
    records: list[CallRecord] = []
    for at, kind, _, payload in timeline:
        late = t0 + at - clock.monotonic()
        if late > 0:
            clock.advance(late)
        if kind == 0:
            payload()
            continue
        record = CallRecord(payload, start=clock.monotonic())
        try:
            record.value = fn(*payload)
        except Exception as exc:
            record.error = exc
        record.end = clock.monotonic()
        records.append(record)
        if after_call is not None:
            after_call()
    return records


def run_threads(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    clock: Clock,
    join_timeout: float = 30.0,
) -> list[CallRecord]:
    """Call ``fn`` from one real thread per call, all released at once by a barrier.

    Args:
        fn: the function under test.
        calls: the arguments of each caller.
        clock: the clock the records are stamped with.
        join_timeout: real seconds to wait for every thread.

    Returns:
        One record per call, in the order given.

    Raises:
        RuntimeError: a thread was still running after ``join_timeout`` (a hang).
    """
    barrier = threading.Barrier(max(1, len(calls)))
    records = [CallRecord(tuple(args), start=float("nan")) for args in calls]

    def worker(record: CallRecord) -> None:
        barrier.wait()
        record.start = clock.monotonic()
        try:
            record.value = fn(*record.args)
        except Exception as exc:
            record.error = exc
        record.end = clock.monotonic()

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_timeout)
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        raise RuntimeError(f"{hung} of {len(threads)} callers still running after {join_timeout}s")
    return records
