"""``python -m benchmarks faults``: the guarded stack under every fault we can reproduce.

Each row runs one fault against ``guard()`` with an L1 + Redis stack (or, for the shared-bucket
rows, a ``RedisTokenBucket``) on a ``redis-server`` this program owns, sync (threads) and async
(tasks), and reports, against what the promise says:

- **backend calls** and the bound ``b + r·T`` of the stack's token bucket over the run;
- **callers' max latency** and the deadline (``guard(timeout=...)``);
- **exceptions that reached callers**, by type: cacheward's own errors (``RateLimited`` ...)
  are allowed answers; anything else is a defect;
- **leaks after close**: threads, file descriptors and (async) tasks left over once the layer
  is closed, against a baseline taken after a warm-up.

Rows marked ``known`` reproduce defects of issue 15 that other work is fixing; they are shown
as they are today, not hidden. The shared-bucket restart row checks the cross-process bound of
docs/protection.md with four bucket objects (four "processes", each its own client and local
share) on one ``redis-server`` that is killed and restarted.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._faultkit import (
    BURST,
    DEADLINE,
    FAULT_FROM,
    FAULT_TO,
    KEYS,
    RATE,
    SHARE,
    TIMEOUT,
    TTL,
    Backend,
    Env,
    Row,
    _fds,
    environment,
)
from benchmarks._harness import machine, print_table, smoke

# --- faults -------------------------------------------------------------------------------------


Fault = Callable[[Env], Callable[[], None]]  # inject, returning the undo


def sigstop(env: Env) -> Callable[[], None]:
    env.server.pause()
    return env.server.resume


def sigkill(env: Env) -> Callable[[], None]:
    env.server.kill()
    return env.server.restart


def blackhole(env: Env) -> Callable[[], None]:
    env.proxy.blackhole()
    return env.proxy.heal


def cut_mid_reply(env: Env) -> Callable[[], None]:
    env.proxy.cut_replies(3)
    return env.proxy.heal


def client_pause(env: Env) -> Callable[[], None]:
    # Paused for as long as the other faults last (CLIENT UNPAUSE would wait behind the pause).
    env.server.client_pause(env.fault_seconds)
    return lambda: time.sleep(0.05)


def trickle(env: Env) -> Callable[[], None]:
    env.proxy.trickle(0.03)
    return env.proxy.heal


def reset_all(env: Env) -> Callable[[], None]:
    env.proxy.reset()
    env.proxy.refuse()
    return env.proxy.heal


def password(env: Env) -> Callable[[], None]:
    admin = env.server.client()
    admin.config_set("requirepass", "changed")
    admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()

    def undo() -> None:
        fixed = env.server.client(password="changed")  # noqa: S106 - a benchmark's own server
        fixed.config_set("requirepass", "")
        fixed.close()

    return undo


def wrong_type(env: Env) -> Callable[[], None]:
    admin = env.server.client()
    admin.delete("cacheward:bucket:{faults}")
    admin.set("cacheward:bucket:{faults}", "not a hash")
    admin.close()

    def undo() -> None:
        fixed = env.server.client()
        fixed.delete("cacheward:bucket:{faults}")
        fixed.close()

    return undo


def lease_without_ttl(env: Env) -> Callable[[], None]:
    """Every cached key gets a garbage lease with no TTL (another process's crash, a bug, an
    operator), and its value is deleted, so the next miss meets the lease."""
    admin = env.server.client()
    for key in admin.scan_iter(match="cacheward:faults*", count=1000):
        if key.endswith(b"}"):
            admin.set(key + b":lease", b"garbage")
            admin.delete(key)
    admin.close()

    def undo() -> None:
        fixed = env.server.client()
        for key in fixed.scan_iter(match="cacheward:faults*:lease", count=1000):
            fixed.delete(key)
        fixed.close()

    return undo


# name -> (fault, what the stack's Redis is reached through, known defect or "")
LAYER_FAULTS: dict[str, tuple[Fault, str, str]] = {
    "SIGSTOP": (sigstop, "proxy", ""),
    "SIGKILL + restart": (sigkill, "proxy", ""),
    "blackhole": (blackhole, "proxy", ""),
    "reset mid-reply": (cut_mid_reply, "proxy", ""),
    "RST + refuse": (reset_all, "proxy", ""),
    "CLIENT PAUSE": (client_pause, "proxy", ""),
    "slow trickle (1 B / 30 ms)": (trickle, "proxy", ""),
    "user client, default retries + SIGKILL": (sigkill, "user", ""),
    "user client, default retries + blackhole": (blackhole, "user", ""),
    "lease without TTL": (lease_without_ttl, "direct", ""),
}
BUCKET_FAULTS: dict[str, tuple[Fault, str, str]] = {
    "bucket: password changed": (password, "direct", ""),
    "bucket: wrong-typed key": (wrong_type, "direct", ""),
}


# --- the load -----------------------------------------------------------------------------------


def _stack(
    env: Env, via: str, bucket_fault: bool, *, asynchronous: bool
) -> tuple[Any, Any, list[Any]]:
    """The limiter, the layer, and the clients the run made itself (to close at the end)."""
    import redis
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    import cacheward as cw

    url = env.server.url if via == "direct" else env.proxy.url
    namespace = f"faults{time.monotonic_ns()}"
    if via == "user":  # the user's own client: timeouts set, redis-py's default retries kept
        user = redis.asyncio.Redis if asynchronous else redis.Redis
        own = user.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            layer = cw.RedisLayer(own, namespace=namespace)
        return cw.TokenBucket(rate=RATE, burst=BURST), layer, [own]
    layer = cw.RedisLayer.from_url(url, timeout=TIMEOUT, namespace=namespace)
    if not bucket_fault:
        return cw.TokenBucket(rate=RATE, burst=BURST), layer, []
    options: dict[str, Any] = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
    if asynchronous:
        client: Any = redis.asyncio.Redis.from_url(
            env.server.url, retry=AsyncRetry(NoBackoff(), 0), **options
        )
    else:
        client = redis.Redis.from_url(env.server.url, retry=Retry(NoBackoff(), 0), **options)
    bucket = cw.RedisTokenBucket(
        client, name="faults", rate=RATE, burst=BURST, fallback_share=SHARE
    )
    return bucket, layer, [client]


def bound(name: str, elapsed: float) -> float:
    """``b + r·T``, and for the shared-bucket rows the local share on top (protection.md)."""
    single = BURST + RATE * elapsed
    return single * (1 + SHARE) if name.startswith("bucket") else single


@dataclass(frozen=True)
class Case:
    """One row to run: the fault, how the stack reaches Redis, the known defect it shows."""

    name: str
    fault: Fault
    via: str
    known: str


def run_sync(case: Case, seconds: float, callers: int) -> Row:
    import cacheward as cw

    name, fault, via, known = case.name, case.fault, case.via, case.known

    with environment() as env:
        bucket, layer, owned = _stack(env, via, name.startswith("bucket"), asynchronous=False)
        backend = Backend()

        @cw.guard(ttl=TTL, layers=[cw.MemoryLayer(), layer], limiter=bucket, timeout=DEADLINE)
        def load(key: int) -> int:
            backend.hit()
            time.sleep(0.002)
            return key

        for key in range(KEYS):  # warm-up: pools, scripts, threads
            load(key)
        threads0, fds0 = threading.active_count(), _fds()
        calls0 = backend.calls
        errors: Counter[str] = Counter()
        worst = [0.0]
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def caller(offset: int) -> None:
            i = offset
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    load(i % KEYS)
                except cw.CacheWardError as exc:
                    with lock:
                        errors[f"cw.{type(exc).__name__}"] += 1
                except Exception as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                took = time.monotonic() - started
                with lock:
                    worst[0] = max(worst[0], took)
                i += 1
                time.sleep(0.001)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(seconds * FAULT_FROM)
        env.fault_seconds = seconds * (FAULT_TO - FAULT_FROM)
        undo = fault(env)
        time.sleep(env.fault_seconds)
        undo()
        for thread in threads:
            thread.join(timeout=DEADLINE * 10 + seconds)
        elapsed = time.monotonic() - began
        layer.close()
        for client in owned:
            client.close()
        time.sleep(0.2)
        leaks = {"threads": threading.active_count() - threads0, "fds": _fds() - fds0}
        return Row(name, "sync", backend.calls - calls0, bound(name, elapsed), worst[0], errors,
                   {k: max(0, v) for k, v in leaks.items()}, known=known)  # fmt: skip


def run_async(case: Case, seconds: float, callers: int) -> Row:
    import cacheward as cw

    name, fault, via, known = case.name, case.fault, case.via, case.known

    async def main(env: Env) -> Row:
        bucket, layer, owned = _stack(env, via, name.startswith("bucket"), asynchronous=True)
        backend = Backend()

        @cw.guard(ttl=TTL, layers=[cw.MemoryLayer(), layer], limiter=bucket, timeout=DEADLINE)
        async def load(key: int) -> int:
            backend.hit()
            await asyncio.sleep(0.002)
            return key

        for key in range(KEYS):
            await load(key)
        tasks0 = len(asyncio.all_tasks())
        fds0 = _fds()
        calls0 = backend.calls
        errors: Counter[str] = Counter()
        worst = 0.0
        stop_at = time.monotonic() + seconds

        async def caller(offset: int) -> None:
            nonlocal worst
            i = offset
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    await load(i % KEYS)
                except cw.CacheWardError as exc:
                    errors[f"cw.{type(exc).__name__}"] += 1
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                worst = max(worst, time.monotonic() - started)
                i += 1
                await asyncio.sleep(0.001)

        began = time.monotonic()
        tasks = [asyncio.ensure_future(caller(n)) for n in range(callers)]
        await asyncio.sleep(seconds * FAULT_FROM)
        env.fault_seconds = seconds * (FAULT_TO - FAULT_FROM)
        undo = await asyncio.to_thread(fault, env)
        await asyncio.sleep(env.fault_seconds)
        await asyncio.to_thread(undo)
        await asyncio.wait(tasks, timeout=DEADLINE * 10 + seconds)
        elapsed = time.monotonic() - began
        await layer.aclose()
        for client in owned:
            await client.aclose()
        await asyncio.sleep(0.2)
        leaks = {"tasks": len(asyncio.all_tasks()) - tasks0, "fds": _fds() - fds0}
        return Row(name, "async", backend.calls - calls0, bound(name, elapsed), worst, errors,
                   {k: max(0, v) for k, v in leaks.items()}, known=known)  # fmt: skip

    with environment() as env:
        return asyncio.run(main(env))


# --- the shared bucket across a restart (four "processes") ------------------------------------


_RESTART_WORKER = """
import json, sys, time
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
import cacheward as cw

url = sys.argv[1]
client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                              retry=Retry(NoBackoff(), 0))
bucket = cw.RedisTokenBucket(client, name="restart", rate=20, burst=10)
client.ping()
print("ready", flush=True)
start, end = (float(x) for x in sys.stdin.readline().split())
while time.time() < start:
    time.sleep(0.001)
stamps = []
while time.time() < end:
    try:
        bucket.reserve(0)
    except cw.RateLimited as exc:
        time.sleep(min(exc.retry_after or 0.005, 0.005))
        continue
    stamps.append(time.time())
print(json.dumps({"stamps": stamps, "shared": bucket.shared_takes,
                  "local": bucket.fallback_takes, "errors": bucket.errors,
                  "last_error": getattr(bucket, "last_error", None)}), flush=True)
"""


def bucket_restart(seconds: float) -> dict[str, object]:
    """Four worker processes share a bucket (rate 20, burst 10, default share 0.1) and take as
    fast as they can; the server is killed, then restarted empty. Returns the most takes in any
    0.5 s and 3 s window from the restart on, against ``b + r·T``."""
    import json
    import subprocess
    import sys

    from tests.servers import RedisServer

    rate, burst, processes = 20.0, 10.0, 4
    server = RedisServer().start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _RESTART_WORKER, server.url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready": imported and connected
        begin = time.time() + 0.2
        end = begin + seconds
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{begin!r} {end!r}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, begin - time.time()) + seconds * 0.15)
        server.kill()
        time.sleep(seconds * 0.2)
        server.restart()
        restarted = time.time()
        print(f"  restarted {restarted - begin:.2f} s into the run", flush=True)
        stamps: list[float] = []
        per_process = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            result = json.loads(out.strip().splitlines()[-1])
            stamps += result.pop("stamps")
            per_process.append(result)
    finally:
        server.stop()
        server.cleanup()
    after = sorted(t for t in stamps if t >= restarted)

    def most(window: float) -> int:
        best, j = 0, 0
        for i, first in enumerate(after):
            while j < len(after) and after[j] < first + window:
                j += 1
            best = max(best, j - i)
        return max(best, sum(1 for t in after if t < restarted + window))

    windows = {
        f"{window:g}s": {"most": most(window), "bound": burst + rate * window}
        for window in (0.5, 3.0)
        if restarted + window <= end
    }
    return {
        "processes": processes,
        "rate": rate,
        "burst": burst,
        "windows": windows,
        "per_process": per_process,
        "restarted_after_s": restarted - begin,
    }


# --- the report ---------------------------------------------------------------------------------

COLUMNS = [
    "fault",
    "colour",
    "backend calls / bound",
    "max latency / deadline",
    "exceptions that reached callers",
    "leaks after close",
    "verdict",
]

KNOWN_NOT_RUN = {
    "memory of failure states (60k keys)": "item 11: python -m benchmarks failures",
}


def run(*, quick: bool) -> dict[str, object]:
    tiny = smoke()
    seconds = 1.2 if tiny else (3.0 if quick else 6.0)
    threads, tasks = (4, 8) if tiny else (16, 64)
    faults = dict(LAYER_FAULTS)
    faults.update(BUCKET_FAULTS)
    if tiny:
        faults = {k: faults[k] for k in ("SIGKILL + restart", "bucket: password changed")}
    print(
        f"guard(ttl={TTL}, timeout={DEADLINE}) with L1 + RedisLayer.from_url(timeout={TIMEOUT}), "
        f"TokenBucket(rate={RATE:g}, burst={BURST:g}); {threads} threads / {tasks} tasks for "
        f"{seconds:g} s, the fault from {FAULT_FROM:.0%} to {FAULT_TO:.0%} of the run. The "
        "warnings printed below (breaker opened, connection refused...) are the scenario, not a "
        "failure.",
        flush=True,
    )
    rows: list[Row] = []
    for name, (fault, via, known) in faults.items():
        for colour in ("sync", "async"):
            runner = run_sync if colour == "sync" else run_async
            callers = threads if colour == "sync" else tasks
            print(f"  {name}, {colour}...", flush=True)
            marked = known if colour == "sync" or "sync" not in known else ""
            rows.append(runner(Case(name, fault, via, marked), seconds, callers))
    if not tiny:  # items 5-7: a process's own threads, loops and forks (benchmarks/_process_faults)
        from benchmarks import _process_faults

        rows += _process_faults.rows(seconds, threads, tasks)
    print_table(
        "Faults: the promise under each (bound and deadline from the stack's settings)",
        COLUMNS,
        [r.cells() for r in rows],
    )
    restart = bucket_restart(1.5 if tiny else (5.0 if quick else 8.0))
    print_table(
        "Shared bucket across a restart: 4 processes, rate 20, burst 10, fallback_share 0.1",
        ["window from the restart on", "most takes, all processes", "bound b + r·T"],
        [[w, v["most"], f"{v['bound']:g}"] for w, v in restart["windows"].items()],  # type: ignore[attr-defined]
    )
    print("\nNot reproduced here (being fixed elsewhere; see issue 15):")
    for what, why in KNOWN_NOT_RUN.items():
        print(f"  - {what}: {why}")
    return {
        "machine": machine(),
        "settings": {
            "seconds": seconds,
            "threads": threads,
            "tasks": tasks,
            "rate": RATE,
            "burst": BURST,
            "deadline_s": DEADLINE,
            "redis_timeout_s": TIMEOUT,
            "ttl_s": TTL,
        },
        "rows": [r.figures() for r in rows],
        "bucket_restart": restart,
        "not_run": KNOWN_NOT_RUN,
    }
