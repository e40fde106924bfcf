"""The promise on a real Redis, under generated sequences of real faults.

Two "processes" (two guarded stacks, each with its own memory layer, ``RedisLayer`` client,
bucket and budget, sharing one namespace and one ``redis-server`` behind a TCP proxy) serve
asyncio callers in real time while a generated sequence of faults hits the server and the path
to it: SIGSTOP/SIGCONT, SIGKILL + restart, ``CLIENT PAUSE``, proxy latency, blackhole, resets
and refusals. After each schedule every clause is checked per process (with a little slack for
real-time scheduling noise), and fetches of one key across the two processes never overlap
while Redis is healthy (cross-process leases).

Few, short schedules: this is the real-fault complement of the simulated properties.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from cacheward import RedisLayer
from cacheward._clock import SYSTEM_CLOCK
from cacheward.testing import Outcome, run_tasks
from promise_harness import CLAUSES, Run, Switches, build, check_all
from servers import RedisServer, TcpProxy
from strategies import KEYS, Config, Schedule

pytestmark = [
    pytest.mark.redis,
    # The faults cut connections mid-flight on purpose (SIGKILL, resets, refusals): the proxy's
    # and the clients' abandoned sockets are sometimes collected unclosed. Only those
    # collection warnings are ignored; any other unraisable exception still fails the test.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <(socket\.socket|function (_SelectorTransport|"
        r"AbstractConnection|StreamWriter)\.__del__):pytest.PytestUnraisableExceptionWarning"
    ),
]

#: Real seconds of scheduling noise tolerated by the timing checks (a shared 2-core machine).
SLACK = 0.5

#: Few schedules: each one takes about two real seconds.
EXAMPLES = min(20, max(3, (settings.default or settings()).max_examples // 10))

REDIS_TIMEOUT = 0.1
CONFIG = Config(
    ttl=0.3,
    stale_ttl=0.3,
    stale_if_error=0.6,
    jitter=0.1,
    backoff=0.1,
    backoff_max=0.4,
    timeout=0.4,
    breaker_failures=2,
    breaker_reset=0.3,
    l1=True,
    l1_maxsize=len(KEYS),
    remotes=1,
    layer_timeout=2 * REDIS_TIMEOUT,  # a fresh connection: connect, then the command
    rate=40.0,
    burst=5.0,
    max_wait=0.05,
    attempts=2,
    ratio=0.2,
    min_per_second=2.0,
    window=1.0,
    retry_backoff=0.01,
    retry_backoff_max=0.05,
    deadline=0.4,
    seed=7,
)

FAULTS = [
    "sigstop",
    "sigcont",
    "kill_restart",
    "client_pause",
    "latency",
    "blackhole",
    "reset",
    "refuse",
    "heal",
]


@dataclasses.dataclass(frozen=True)
class RedisSchedule:
    calls: list[tuple[float, Any]]
    faults: list[tuple[float, str]]
    outcome: Outcome


redis_schedules = st.builds(
    RedisSchedule,
    calls=st.lists(
        st.tuples(st.floats(0.0, 1.5).map(lambda t: round(t, 2)), st.sampled_from(KEYS)),
        min_size=10,
        max_size=60,
    ).map(lambda calls: sorted(calls, key=lambda c: c[0])),
    faults=st.lists(
        st.tuples(st.floats(0.0, 1.2).map(lambda t: round(t, 2)), st.sampled_from(FAULTS)),
        max_size=5,
    ).map(sorted),
    outcome=st.builds(
        Outcome,
        kind=st.sampled_from(["ok", "ok", "ok", "fail", "raise"]),
        delay=st.sampled_from([0.0, 0.005, 0.03]),
    ),
)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


@pytest.fixture(scope="module")
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(server.port) as prx:
        yield prx


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    # Breaker trips are logged as warnings by design; hundreds of them here are expected.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def fault_action(name: str, server: RedisServer, proxy: TcpProxy) -> Any:
    def act() -> None:
        with contextlib.suppress(Exception):  # e.g. SIGCONT when not stopped
            if name == "sigstop":
                server.pause()
            elif name == "sigcont":
                server.resume()
            elif name == "kill_restart":
                server.restart()
            elif name == "client_pause":
                server.client_pause(0.3)
            elif name == "latency":
                proxy.set_latency(0.05)
            elif name == "blackhole":
                proxy.blackhole()
            elif name == "reset":
                proxy.reset()
            elif name == "refuse":
                proxy.refuse()
            else:
                proxy.heal()

    return act


def heal(server: RedisServer, proxy: TcpProxy) -> None:
    with contextlib.suppress(Exception):
        server.resume()
    if not server.running:
        server.restart()
    with contextlib.suppress(Exception):
        server.client_unpause()
    proxy.heal()
    server.flushall()


async def two_processes(
    schedule: RedisSchedule,
    server: RedisServer,
    proxy: TcpProxy,
    namespace: str,
    redis_timeout: float = REDIS_TIMEOUT,
) -> list[Run]:
    loop = asyncio.get_running_loop()
    plain = Schedule(
        config=dataclasses.replace(CONFIG, layer_timeout=2 * redis_timeout),
        calls=schedule.calls,
        layer_events=[],
        backend_events=[],
        first_outcome=schedule.outcome,
    )
    stacks = []
    for process in range(2):
        layer = RedisLayer.from_url(proxy.url, socket_timeout=redis_timeout, namespace="promise")
        fn, backend, remotes, trace, _ = build(
            plain,
            SYSTEM_CLOCK,
            is_async=True,
            switches=Switches(),
            remote_layers=[layer],
            namespace=namespace,
        )
        backend.first_number = 1 + 1_000_000 * process
        stacks.append((fn, backend, remotes, trace, layer))

    def inject(name: str) -> None:
        loop.run_in_executor(None, fault_action(name, server, proxy))

    events = [(at, (lambda n=name: inject(n))) for at, name in schedule.faults]
    # Each process gets every other caller, so both see every key and contend for leases.
    results = await asyncio.gather(
        *(
            run_tasks(
                fn,
                [(at, (key,)) for i, (at, key) in enumerate(schedule.calls) if i % 2 == p],
                clock=SYSTEM_CLOCK,
                events=events if p == 0 else (),
                horizon=30.0,
            )
            for p, (fn, *_rest) in enumerate(stacks)
        )
    )
    # Let fetches that outlived their callers finish (a fetch is never cancelled by its
    # waiters leaving), so nothing is cut off at the end of the run.
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=5.0)
    runs = []
    backends = [stack[1] for stack in stacks]
    for (fn, backend, remotes, trace, layer), records in zip(stacks, results, strict=True):
        peers = [b for b in backends if b is not backend]
        runs.append(
            Run(
                plain,
                SYSTEM_CLOCK,
                backend,
                remotes,
                trace,
                records,
                True,
                fn,
                slack=SLACK,
                peers=peers,
            )
        )
        await layer.aclose()
    return runs


def cross_process_overlaps(runs: list[Run]) -> int:
    """The most backend attempts of one key running at once across both processes."""
    edges: list[tuple[float, int, tuple[type, Any]]] = []
    for run in runs:
        for attempt in run.backend.attempts:
            key = (type(attempt.key), attempt.key)
            edges.append((attempt.start, 1, key))
            edges.append((attempt.end if attempt.end is not None else float("inf"), -1, key))
    running: dict[tuple[type, Any], int] = {}
    most = 0
    for _, step, key in sorted(edges, key=lambda e: (e[0], e[1])):
        running[key] = running.get(key, 0) + step
        most = max(most, running[key])
    return most


#: Real-time examples are not shrunk: each run takes seconds and timing varies between runs.
REAL_TIME = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@REAL_TIME
@given(schedule=redis_schedules)
def test_every_clause_holds_on_a_real_redis_under_faults(
    schedule: RedisSchedule, server: RedisServer, proxy: TcpProxy
) -> None:
    try:
        runs = asyncio.run(two_processes(schedule, server, proxy, "faults"))
    finally:
        heal(server, proxy)
    for run in runs:
        check_all(run, CLAUSES)
    # Without leases each process still fetches a key at most once at a time.
    assert cross_process_overlaps(runs) <= 2


@REAL_TIME
@given(schedule=redis_schedules.map(lambda s: dataclasses.replace(s, faults=[])))
def test_one_fetch_per_key_across_processes_while_redis_is_up(
    schedule: RedisSchedule, server: RedisServer, proxy: TcpProxy
) -> None:
    slow = dataclasses.replace(schedule, outcome=Outcome("ok", delay=0.03))
    try:
        runs = asyncio.run(two_processes(slow, server, proxy, "healthy", redis_timeout=0.5))
    finally:
        heal(server, proxy)
    for run in runs:
        check_all(run, CLAUSES)
    # "While Redis is up" as the processes saw it: every Redis operation answered in time. On
    # a loaded machine one may not; that process then fetched under its own bounds (checked
    # above), as it must, and the cross-process clause does not apply to that run.
    answered = all(
        run.fn.stats().layer_errors == 0 and run.fn.stats().layer_skips == 0 for run in runs
    )
    event(f"every Redis operation answered: {answered}")
    if answered:
        assert cross_process_overlaps(runs) <= 1
