"""Build the guarded function of the promise, run a schedule through it, check each clause.

The function under test is the stack ``DESIGN.md`` promises about, built from the real public
decorators::

    cw.cached(...)(request(cw.retry(budget=...)(attempt(cw.rate_limit(bucket)(backend)))))

``request`` and ``attempt`` are thin recorders (what a request and a retry are, seen from
outside); the backend and the remote layers are ``cacheward.testing``'s scripted ones; time is
a fake clock (a simulated event loop for ``async def``). :class:`Switches` turns one mechanism
off at a time, for the tests that show each check can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from unittest import mock

import cacheward as cw
import cacheward._readpath
from cacheward import Clock
from cacheward._core.readthrough import ReadThrough
from cacheward.testing import (
    CallRecord,
    FakeClock,
    ManualExecutor,
    Outcome,
    ScriptedBackend,
    ScriptedLayer,
    SimClock,
    run_sequence,
    run_simulated,
    run_tasks,
)
from strategies import KEYS, REGRESSION_CONFIG, Schedule

EPS = 1e-6
#: Tolerance for "which came first" at the same instant: float noise only.
ORDER_EPS = 1e-9
CLAUSES = (
    "rate",
    "single_flight",
    "budget",
    "backoff",
    "deadline",
    "stale_limit",
    "keys",
    "answers",
)


@dataclasses.dataclass(frozen=True)
class Switches:
    """Which mechanisms are on (all, except in the tests that show a check can fail)."""

    limiter: bool = True
    coalescing: bool = True
    budget: bool = True
    backoff: bool = True
    timeout: bool = True
    stale_limit: bool = True
    typed_keys: bool = True


@dataclasses.dataclass
class Request:
    """One call of the retrying function (a fetch, as ``cached`` sees it)."""

    key: Any
    start: float
    end: float = float("nan")
    ok: bool = False
    #: Ended by cancellation (no verdict on the backend: no back-off follows).
    cancelled: bool = False


class Trace:
    """What the recorders saw."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.retry_attempts: list[float] = []
        self.deposits: list[float] = []
        self.withdrawals: list[float] = []
        #: ``(monotonic time, key)`` of every ``invalidate`` call, when it happened.
        self.invalidations: list[tuple[float, Any]] = []


class TracingBudget(cw.RetryBudget):
    """The real budget, recording when it counted a request and when it allowed a retry."""

    __slots__ = ("trace",)
    trace: Trace

    def deposit(self) -> None:
        super().deposit()
        self.trace.deposits.append(self.clock.monotonic())

    def try_withdraw(self) -> bool:
        allowed = super().try_withdraw()
        if allowed:
            self.trace.withdrawals.append(self.clock.monotonic())
        return allowed


class ForgetfulReadThrough(ReadThrough[Any]):
    """The real decision table with its flight table switched off: nobody ever waits."""

    def decide(self, key: Any, entry: Any, **kwargs: Any) -> Any:
        state = self.states.get(key)
        if state is not None:
            state.flight = None
        return super().decide(key, entry, **kwargs)


_ATTEMPT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("attempt")


@dataclasses.dataclass
class Run:
    schedule: Schedule
    clock: Clock
    backend: ScriptedBackend
    layers: list[Any]
    trace: Trace
    records: list[CallRecord]
    is_async: bool
    fn: Any = None
    stack: str = "decorators"
    #: Real seconds of scheduling noise tolerated by the timing checks (0 in simulated time).
    slack: float = 0.0
    #: Other processes' backends, whose values reach this one through a shared layer.
    peers: list[ScriptedBackend] = dataclasses.field(default_factory=list)


def build(
    schedule: Schedule,
    clock: Clock,
    *,
    is_async: bool,
    switches: Switches,
    stack: str = "decorators",
    remote_layers: list[Any] | None = None,
    namespace: str | None = None,
    shared: dict[str, Any] | None = None,
) -> tuple[Any, ScriptedBackend, list[Any], Trace, ManualExecutor]:
    """The guarded function for ``schedule``'s configuration, with its scripted parts.

    ``stack="decorators"`` composes the public decorators with recorders between them;
    ``stack="guard"`` is ``cw.guard`` itself (no request recorder fits inside it, so the
    back-off clause, which needs to see requests, is checked on the decorators only).
    ``remote_layers`` replaces the scripted remote layers (a real Redis layer, for example).
    ``shared`` (a dict, filled by the first call) makes several functions share one backend,
    trace, bucket, budget and set of remote layers, as functions calling one database do.
    """
    cfg = schedule.config
    parts = {} if shared is None else shared
    if not parts:
        parts["trace"] = trace = Trace()
        parts["backend"] = ScriptedBackend(clock=clock, script=schedule.first_outcome)
        parts["remotes"] = (
            [
                ScriptedLayer(f"remote{i}", clock=clock, timeout=cfg.layer_timeout, capacity=1)
                for i in range(cfg.remotes)
            ]
            if remote_layers is None
            else remote_layers
        )
        parts["bucket"] = cw.TokenBucket(rate=cfg.rate, burst=cfg.burst, clock=clock)
        parts["budget"] = budget = TracingBudget(
            ratio=cfg.ratio,
            min_per_second=cfg.min_per_second if switches.budget else 1e9,
            window=cfg.window,
            clock=clock,
        )
        budget.trace = trace
    trace, backend, remotes = parts["trace"], parts["backend"], parts["remotes"]
    bucket, budget = parts["bucket"], parts["budget"]
    layers: list[Any] = [cw.MemoryLayer(maxsize=cfg.l1_maxsize)] if cfg.l1 else []
    layers.extend(remotes)
    retrying = cw.retry(
        attempts=cfg.attempts,
        budget=budget,
        backoff=cfg.retry_backoff,
        backoff_max=cfg.retry_backoff_max,
        deadline=cfg.deadline,
        clock=clock,
        rng=random.Random(cfg.seed),
    )
    limiting = cw.rate_limit(bucket, max_wait=cfg.max_wait)
    executor = ManualExecutor()
    if stack == "guard":
        guarded = cw.guard(
            ttl=cfg.ttl,
            stale_ttl=cfg.stale_ttl,
            stale_if_error=cfg.stale_if_error,
            layers=layers,
            limiter=bucket,
            max_wait=cfg.max_wait,
            attempts=cfg.attempts,
            budget=budget,
            retry_backoff=cfg.retry_backoff,
            retry_backoff_max=cfg.retry_backoff_max,
            wait_timeout=cfg.timeout,
            clock=clock,
            rng=random.Random(cfg.seed),
            jitter=cfg.jitter,
            backoff=cfg.backoff,
            backoff_max=cfg.backoff_max,
            refresh_executor=None if is_async else executor,
        )(backend.acall if is_async else backend)
        return guarded, backend, remotes, trace, executor
    caching = cw.cached(
        ttl=cfg.ttl,
        stale_ttl=cfg.stale_ttl,
        stale_if_error=cfg.stale_if_error if switches.stale_limit else 1e6,
        layers=layers,
        clock=clock,
        jitter=cfg.jitter,
        backoff=cfg.backoff if switches.backoff else 0.0,
        backoff_max=cfg.backoff_max if switches.backoff else 0.0,
        wait_timeout=cfg.timeout if switches.timeout else 1e6,
        rng=random.Random(cfg.seed + 1),
        refresh_executor=None if is_async else executor,
        breaker_failures=cfg.breaker_failures,
        breaker_reset=cfg.breaker_reset,
        key=None if switches.typed_keys else str,
        namespace=namespace,
    )

    if is_async:

        async def attempt(key: Any) -> Any:
            _mark_attempt(trace, clock)
            return await backend.acall(key)

        inner = retrying(limiting(attempt) if switches.limiter else attempt)

        async def request(key: Any) -> Any:
            token, record = _begin_request(trace, clock, key)
            try:
                value = await inner(key)
            except Exception:
                raise
            except BaseException:
                record.cancelled = True
                raise
            finally:
                _end_request(token, record, clock)
            record.ok = True
            return value

        fn: Callable[..., Any] = request
    else:

        def sync_attempt(key: Any) -> Any:
            _mark_attempt(trace, clock)
            return backend(key)

        sync_inner = retrying(limiting(sync_attempt) if switches.limiter else sync_attempt)

        def sync_request(key: Any) -> Any:
            token, record = _begin_request(trace, clock, key)
            try:
                value = sync_inner(key)
            except Exception:
                raise
            except BaseException:
                record.cancelled = True
                raise
            finally:
                _end_request(token, record, clock)
            record.ok = True
            return value

        fn = sync_request
    with contextlib.ExitStack() as patches:
        if not switches.coalescing:
            patches.enter_context(
                mock.patch.object(cacheward._readpath, "ReadThrough", ForgetfulReadThrough)
            )
        guarded = caching(fn)

    return guarded, backend, remotes, trace, executor


@contextlib.contextmanager
def layer_errors_reach_callers() -> Iterator[None]:
    """Switch off "a layer error is a miss": shared-layer calls go straight to the layer."""

    def sync(self: Any) -> Any:
        return self.call(self.guarded.layer)

    async def aio(self: Any) -> Any:
        return await self.acall(self.guarded.layer)

    op = cacheward._readpath.LayerOp
    with mock.patch.object(op, "sync", sync), mock.patch.object(op, "aio", aio):
        yield


def _mark_attempt(trace: Trace, clock: Clock) -> None:
    counter = _ATTEMPT.get()
    counter[0] += 1
    if counter[0] > 1:
        trace.retry_attempts.append(clock.monotonic())


def _begin_request(
    trace: Trace, clock: Clock, key: Any
) -> tuple[contextvars.Token[list[int]], Request]:
    record = Request(key, clock.monotonic())
    trace.requests.append(record)
    return _ATTEMPT.set([0]), record


def _end_request(token: contextvars.Token[list[int]], record: Request, clock: Clock) -> None:
    _ATTEMPT.reset(token)
    record.end = clock.monotonic()


def _events(
    schedule: Schedule,
    backend: ScriptedBackend,
    remotes: list[Any],
    fn: Any,
    *,
    is_async: bool,
    trace: Trace,
    clock: Clock,
) -> list[tuple[float, Callable[[], object]]]:
    events: list[tuple[float, Callable[[], object]]] = []
    for at, key in schedule.invalidations:
        if is_async:
            events.append((at, functools.partial(_invalidate_soon, fn, key, trace, clock)))
        else:
            events.append((at, functools.partial(_invalidate_now, fn, key, trace, clock)))
    for at, index, mode in schedule.layer_events:
        layer = remotes[index]
        action = layer.flush if mode == "flush" else functools.partial(layer.set_mode, mode)
        events.append((at, action))
    for at, outcome in schedule.backend_events:
        events.append((at, functools.partial(setattr, backend, "script", outcome)))
    return events


_PENDING: set[asyncio.Task[None]] = set()


def _invalidate_now(fn: Any, key: Any, trace: Trace, clock: Clock) -> None:
    # Recorded when it happens: a sync schedule runs events late when calls take time.
    trace.invalidations.append((clock.monotonic(), key))
    fn.invalidate(key)


async def _ainvalidate(fn: Any, key: Any, trace: Trace, clock: Clock) -> None:
    trace.invalidations.append((clock.monotonic(), key))
    await fn.invalidate(key)


def _invalidate_soon(fn: Any, key: Any, trace: Trace, clock: Clock) -> None:
    task = asyncio.ensure_future(_ainvalidate(fn, key, trace, clock))
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


def run_async_functions(schedule: Schedule, functions: int) -> Run:
    """Run ``schedule`` through ``functions`` async guarded functions that share one backend,
    bucket, budget and remote layers (callers dealt out in turn); one combined record."""
    clock = SimClock()
    shared: dict[str, Any] = {}
    fns = [
        build(
            schedule,
            clock,
            is_async=True,
            switches=Switches(),
            namespace=f"function{i}",
            shared=shared,
        )[0]
        for i in range(functions)
    ]
    backend, remotes = shared["backend"], shared["remotes"]

    async def main() -> list[CallRecord]:
        parts = await asyncio.gather(
            *(
                run_tasks(
                    fn,
                    [
                        (at, (key,))
                        for n, (at, key) in enumerate(schedule.calls)
                        if n % functions == i
                    ],
                    clock=clock,
                    events=_events(
                        schedule,
                        backend,
                        remotes,
                        fns[0],
                        is_async=True,
                        trace=shared["trace"],
                        clock=clock,
                    )
                    if i == 0
                    else (),
                    horizon=schedule.span + 10_000.0,
                )
                for i, fn in enumerate(fns)
            )
        )
        return [record for part in parts for record in part]

    records = run_simulated(_drained(main(), schedule.span + 10_000.0), clock=clock)
    return Run(schedule, clock, backend, remotes, shared["trace"], records, True, fns[0])


def run_sync(
    schedule: Schedule, switches: Switches = Switches(), *, stack: str = "decorators"
) -> Run:
    """Run ``schedule`` through the sync stack, one caller at a time, on a fake clock."""
    clock = FakeClock()
    fn, backend, remotes, trace, executor = build(
        schedule, clock, is_async=False, switches=switches, stack=stack
    )
    records = run_sequence(
        fn,
        [(at, (key,)) for at, key in schedule.calls],
        clock=clock,
        events=_events(schedule, backend, remotes, fn, is_async=False, trace=trace, clock=clock),
        after_call=executor.run_pending,
    )
    return Run(schedule, clock, backend, remotes, trace, records, False, fn, stack)


def run_async(
    schedule: Schedule, switches: Switches = Switches(), *, stack: str = "decorators"
) -> Run:
    """Run ``schedule`` through the async stack, every caller its own task, in simulated time."""
    clock = SimClock()
    fn, backend, remotes, trace, _ = build(
        schedule, clock, is_async=True, switches=switches, stack=stack
    )
    horizon = schedule.span + 10_000.0
    records = run_simulated(
        _drained(
            run_tasks(
                fn,
                [(at, (key,)) for at, key in schedule.calls],
                clock=clock,
                events=_events(
                    schedule, backend, remotes, fn, is_async=True, trace=trace, clock=clock
                ),
                horizon=horizon,
            ),
            horizon,
        ),
        clock=clock,
    )
    return Run(schedule, clock, backend, remotes, trace, records, True, fn, stack)


async def _drained(main: Awaitable[list[CallRecord]], horizon: float) -> list[CallRecord]:
    """Await ``main``, then let fetches and refreshes that outlived their callers finish (in
    simulated time), so none is cut off, and checked, half-way."""
    records = await main
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=horizon)
    return records


# --------------------------------------------------------------------------------------------
# The clauses


def hung_layer_schedule(*, breaker_failures: int, timeout: float = 1.0) -> Schedule:
    """One call, ttl=0.5 s and no stale window, one shared layer hung from the start (1 s
    timeout), a 0.5 s backend: the regression schedule of "a leader answers before writing"."""
    config = dataclasses.replace(
        REGRESSION_CONFIG,
        ttl=0.5,
        timeout=timeout,
        l1=False,
        remotes=1,
        layer_timeout=1.0,
        breaker_failures=breaker_failures,
        breaker_reset=0.5,
        rate=1.0,
        burst=1.0,
    )
    return Schedule(
        config=config,
        calls=[(0.0, "a")],
        layer_events=[(0.0, 0, "hung")],
        backend_events=[],
        first_outcome=Outcome("ok", delay=0.5),
    )


def check_rate(run: Run) -> None:
    """Clause 1: backend attempts <= burst + rate * T over every window."""
    cfg = run.schedule.config
    times = sorted(a.start for a in run.backend.attempts)
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            allowed = cfg.burst + cfg.rate * (times[j] - first + run.slack)
            assert j - i + 1 <= allowed + EPS, (
                f"rate: {j - i + 1} backend attempts in [{first}, {times[j]}] "
                f"> burst + rate*T = {allowed:.3f}"
            )


def check_single_flight(run: Run) -> None:
    """Clause 2: at most one backend fetch per key in flight at a time."""
    assert run.backend.max_in_flight <= 1, (
        f"single_flight: {run.backend.max_in_flight} attempts of one key ran at once"
    )
    by_key: dict[tuple[type, Any], list[Request]] = {}
    for request in run.trace.requests:
        by_key.setdefault((type(request.key), request.key), []).append(request)
    for key, requests in by_key.items():
        ordered = sorted(requests, key=lambda r: r.start)
        for before, after in itertools.pairwise(ordered):
            assert after.start >= before.end - EPS, (
                f"single_flight: fetches of {key[1]!r} overlap: "
                f"[{before.start}, {before.end}] and [{after.start}, {after.end}]"
            )


def check_budget(run: Run) -> None:
    """Clause 3: retries <= ratio * requests + floor * (T + W) over every interval."""
    cfg = run.schedule.config
    trace = run.trace
    assert len(trace.retry_attempts) <= len(trace.withdrawals), (
        f"budget: {len(trace.retry_attempts)} retries but only {len(trace.withdrawals)} "
        "allowed by the budget"
    )
    retries = sorted(trace.withdrawals)
    deposits = sorted(trace.deposits)
    for i, first in enumerate(retries):
        for j in range(i, len(retries)):
            last = retries[j]
            requests = sum(1 for d in deposits if first - cfg.window - EPS <= d <= last + EPS)
            allowed = cfg.ratio * requests + cfg.min_per_second * (last - first + cfg.window)
            assert j - i + 1 <= allowed + EPS, (
                f"budget: {j - i + 1} retries in [{first}, {last}] > ratio*requests + "
                f"floor*(T+W) = {cfg.ratio}*{requests} + "
                f"{cfg.min_per_second}*({last - first:.3f}+{cfg.window:.3f}) = {allowed:.3f}"
            )


def check_backoff(run: Run) -> None:
    """Clause 4: after a failed fetch, no fetch of that key before its back-off has passed;
    meanwhile a caller holding a stale value gets it rather than an error."""
    cfg = run.schedule.config
    by_key: dict[tuple[type, Any], list[Request]] = {}
    for request in run.trace.requests:
        by_key.setdefault((type(request.key), request.key), []).append(request)
    for key, requests in by_key.items():
        by_end = sorted(requests, key=lambda r: r.end)
        failures = 0
        for failed in by_end:
            if failed.ok:
                failures = 0
                continue
            if failed.cancelled:
                continue
            failures += 1  # in a row, by end time (the core counts at least as many)
            # Equal jitter: the back-off lasts at least half its ceiling.
            least = 0.5 * min(cfg.backoff_max, cfg.backoff * 2 ** (failures - 1))
            for later in requests:
                # Already running when it failed (after an invalidation, or a request that
                # started a microsecond before: the limiter's tiny waits move the fake clock by
                # about EPS, so ordering uses float noise only, not EPS).
                if later is failed or later.start < failed.end - ORDER_EPS:
                    continue
                if any(r.ok and failed.end <= r.end <= later.start for r in requests):
                    continue  # a success in between ends the back-off
                assert later.start >= failed.end + least - EPS, (
                    f"backoff: {key[1]!r} failed at {failed.end} (failure {failures}) and was "
                    f"fetched again at {later.start}, before its back-off of >= {least:.3f}s"
                )
    # Stale data is served while the key backs off (checked where the memory layer reliably
    # holds every key, so "a stale value was available" is known from the outside).
    if not (cfg.l1 and cfg.l1_maxsize >= len(KEYS)):
        return
    successes = [r for r in run.trace.requests if r.ok]
    for call in run.records:
        if call.error is None or call.end is None:
            continue
        key = call.args[0]
        dropped = [at for at, k in run.trace.invalidations if type(k) is type(key) and k == key]
        for success in successes:
            if type(success.key) is not type(key) or success.key != key:
                continue
            if any(success.start - EPS <= at <= call.end + EPS for at in dropped):
                continue  # invalidated during the fetch or since: not stored, or dropped
            usable_until = success.end + cfg.ttl * (1 - cfg.jitter) + cfg.error_limit
            # Strictly before: a fetch ending at the very instant a caller arrives may finish
            # after that caller read the memory layer.
            assert not (success.end < call.start and call.end < usable_until - EPS), (
                f"backoff: a caller of {key!r} got {call.error!r} at {call.end} though the "
                f"value fetched at {success.end} was usable until >= {usable_until:.3f}"
            )


def deadline_of(run: Run) -> float:
    """The longest a caller may take, from the configuration (see docs/guarantees.md)."""
    cfg = run.schedule.config
    reads = cfg.remotes * cfg.layer_timeout
    if run.is_async:
        return reads + cfg.timeout
    slowest = max(
        [run.schedule.first_outcome.delay, *(o.delay for _, o in run.schedule.backend_events)]
    )
    retrying = cfg.timeout if run.stack == "guard" else cfg.deadline
    # No shared-layer write term: writes run after the caller was answered.
    return reads + retrying + slowest


def check_deadline(run: Run) -> None:
    """Clause 5a: no caller waits past its deadline."""
    limit = deadline_of(run) + run.slack
    for call in run.records:
        assert call.end is not None, f"deadline: the caller of {call.args} never got an answer"
        assert call.end - call.start <= limit + EPS, (
            f"deadline: the caller of {call.args} waited {call.end - call.start:.3f}s > "
            f"{limit:.3f}s"
        )


def check_stale_limit(run: Run) -> None:
    """Clause 5b: a served value is never older than its stale limit."""
    cfg = run.schedule.config
    limit = cfg.ttl + cfg.error_limit + run.slack
    for call in run.records:
        if call.error is not None or call.end is None:
            continue
        produced = next(
            (found for b in [run.backend, *run.peers] if (found := b.value_of(call.value[1]))),
            None,
        )
        assert produced is not None, f"stale_limit: {call.value!r} was never fetched"
        assert produced.end is not None
        age = call.end - produced.end
        assert age < limit + EPS, (
            f"stale_limit: the caller of {call.args} at {call.end} got the value fetched at "
            f"{produced.end} ({age:.3f}s old > ttl + stale limit = {limit:.3f}s)"
        )


def check_keys(run: Run) -> None:
    """Clause 5c: a served value is never another key's value."""
    for call in run.records:
        if call.error is not None or call.end is None:
            continue
        key = call.args[0]
        got = call.value[0]
        assert type(got) is type(key), f"keys: the caller of {key!r} got the value of {got!r}"
        assert got == key, f"keys: the caller of {key!r} got the value of {got!r}"


def check_answers(run: Run) -> None:
    """Clause 5d: every caller gets a value or a clear error, never a hang or a stray error."""
    for call in run.records:
        assert call.end is not None, f"answers: the caller of {call.args} never got an answer"
        error = call.error
        if error is None:
            assert isinstance(call.value, list), f"answers: {call.value!r} is not a value"
            assert len(call.value) == 2, f"answers: {call.value!r} is not a value"
            continue
        ours = isinstance(error, cw.CacheWardError)
        backends = type(error) in (ConnectionError, ValueError) and str(error).startswith(
            "backend "
        )
        assert ours or backends, f"answers: the caller of {call.args} got {error!r}"


CHECKS: dict[str, Callable[[Run], None]] = {
    "rate": check_rate,
    "single_flight": check_single_flight,
    "budget": check_budget,
    "backoff": check_backoff,
    "deadline": check_deadline,
    "stale_limit": check_stale_limit,
    "keys": check_keys,
    "answers": check_answers,
}


def check_all(run: Run, clauses: tuple[str, ...] = CLAUSES) -> None:
    """Check every clause in ``clauses`` (raises AssertionError naming the first broken one)."""
    for clause in clauses:
        CHECKS[clause](run)
