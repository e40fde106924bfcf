"""The stacks the incident replays, in one registry: how each is built, pre-filled and described.

A stack is what one worker process calls for each request (:class:`Stack`: ``get(customer)``,
``flush()``, ``stats()``). Each has a :class:`StackSpec` in :data:`REGISTRY`; a run replays the
stacks it is given (``--stacks``; :data:`DEFAULT`: the naive baseline, then ``guard()``), one after
the other, and the report has one column per stack.

**Adding a variant** (another limiter, another setting): write a module-level ``build`` function
(it runs in each worker process, so it must be importable: the spec is pickled by reference),
usually a one-liner over :class:`GuardedStack` with its own ``limiter=`` factory, and
:func:`register` a :class:`StackSpec` for it, here or in a module this one imports. For example::

    def _build_adaptive(store: Store, sc: Scenario, redis_url: str | None) -> Stack:
        return GuardedStack(store, sc, redis_url=redis_url, limiter=adaptive_limiter)

    register(dataclasses.replace(REGISTRY["guarded"], name="guarded-adaptive",
                                 label="cacheward (adaptive)", build=_build_adaptive))

then ``python -m benchmarks incident --stacks naive,guarded,guarded-adaptive``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from benchmarks._db import StatementTimeout, Store
from benchmarks._naive import NAIVE_CONFIG, NaiveStack, assemble
from benchmarks._redisproc import KEY_PREFIX, LAYER_PREFIX
from benchmarks.incident.scenario import Scenario

__all__ = [
    "DEFAULT",
    "GUARDED_NAMESPACE",
    "REGISTRY",
    "GuardedStack",
    "LimiterFactory",
    "Stack",
    "StackSpec",
    "guarded_config",
    "keyset_page",
    "redis_limiter",
    "register",
    "selected",
]


class Stack(Protocol):
    """What a worker process calls: one request, the outage's flush, its counters."""

    def get(self, customer: int) -> str:
        """The customer's configuration payload (``"<built_at>|<json>"``)."""
        ...

    def flush(self) -> None:
        """Lose the in-process cache, as the incident did."""
        ...

    def stats(self) -> dict[str, Any]:
        """What this process's stack counted (JSON-ready)."""
        ...

    def close(self) -> None:
        """Release its connections, after its background writes (the replay's workers exit
        instead; the smoke test builds stacks in its own process)."""
        ...


@dataclass(frozen=True)
class StackSpec:
    """One stack the replay can run.

    Attributes:
        name: its key on the command line (``--stacks``) and in the JSON.
        label: its column heading in the report.
        summary: what it is, in a few words, for the prose summary.
        build: makes the stack in a worker process: ``build(store, scenario, redis_url)``;
            module-level (it is pickled by reference).
        prefill: fills Redis as a long-running service would have it:
            ``prefill(scenario, store, redis_url, written)``, ``written`` being when each
            customer's entry was written (wall-clock seconds).
        config: its settings as the report prints them.
        baseline: the stack every other is compared with (no targets are checked on it).
    """

    name: str
    label: str
    summary: str
    build: Callable[[Store, Scenario, str | None], Stack]
    prefill: Callable[[Scenario, Store, str, dict[int, float]], None]
    config: Callable[[Scenario], dict[str, Any]]
    baseline: bool = False


#: Every stack the replay knows, by name.
REGISTRY: dict[str, StackSpec] = {}
#: What a run replays when no ``--stacks`` is given.
DEFAULT = ("naive", "guarded")


def register(spec: StackSpec) -> StackSpec:
    """Add ``spec`` to :data:`REGISTRY` (a name can be registered once)."""
    if spec.name in REGISTRY:
        raise ValueError(f"a stack named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def selected(names: str | tuple[str, ...] | list[str] | None) -> list[StackSpec]:
    """The specs for ``names`` (a comma-separated string or a sequence), baseline first."""
    if names is None:
        names = DEFAULT
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown stack {', '.join(unknown)}; choose from {', '.join(REGISTRY)} "
            "(comma-separated)"
        )
    specs = [REGISTRY[n] for n in dict.fromkeys(names)]
    baselines = [s for s in specs if s.baseline]
    if len(baselines) != 1 or len(specs) < 2:
        raise ValueError(
            "--stacks needs the baseline (naive) and at least one stack to compare with it"
        )
    return baselines + [s for s in specs if not s.baseline]


# ---------------------------------------------------------------------------------------------
# The naive stack (benchmarks._naive).
# ---------------------------------------------------------------------------------------------


def _naive_redis_timeouts() -> bool:
    return os.environ.get("CACHEWARD_BENCH_NAIVE_REDIS", "") == "timeouts"


def _build_naive(store: Store, sc: Scenario, redis_url: str | None) -> Stack:
    return NaiveStack(
        store,
        ttl=sc.ttl,
        page_size=sc.page_size,
        redis_url=redis_url,
        key_prefix=KEY_PREFIX,
        redis_timeouts=_naive_redis_timeouts(),
    )


def _prefill_naive(sc: Scenario, store: Store, redis_url: str, written: dict[int, float]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for customer, stamp in written.items():
            items = [tuple(r) for r in _all_rows(store, customer, sc.page_size)]
            payload = f"{stamp:.3f}|" + assemble(customer, items).split("|", 1)[1]
            ex = max(1, math.ceil(stamp + sc.ttl - time.time()))
            client.set(f"{KEY_PREFIX}naive:config:{customer}", payload, ex=ex)
    finally:
        client.close()


def _naive_config(sc: Scenario) -> dict[str, Any]:
    if not _naive_redis_timeouts():
        return dict(NAIVE_CONFIG)
    return {
        **NAIVE_CONFIG,
        "l2": "redis.Redis.from_url(url, socket_timeout=0.25, "
        "socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0))",
    }


def _all_rows(store: Store, customer: int, page_size: int) -> list[Any]:
    out: list[Any] = []
    after = 0
    while True:
        rows = store.keyset_page(customer, after, page_size)
        out.extend(rows)
        if len(rows) < page_size:
            return out
        after = rows[-1][0]


register(
    StackSpec(
        name="naive",
        label="naive",
        summary="cachetools + redis-py defaults + tenacity retries + OFFSET pagination",
        build=_build_naive,
        prefill=_prefill_naive,
        config=_naive_config,
        baseline=True,
    )
)


# ---------------------------------------------------------------------------------------------
# The guarded stack.
# ---------------------------------------------------------------------------------------------

_STORE: Store | None = None
GUARDED_NAMESPACE = KEY_PREFIX + "guarded"


def keyset_page(customer: int, cursor: str | None, limit: int) -> Any:
    """One keyset page of a customer's configuration, as a ``cw.Page``."""
    import cacheward as cw

    assert _STORE is not None
    rows = _STORE.keyset_page(customer, int(cursor) if cursor else 0, limit)
    return cw.Page(items=rows, next_cursor=str(rows[-1][0]) if len(rows) == limit else None)


def retryable(error: BaseException) -> bool:
    """What the guarded stack retries: statement timeouts, plus cacheward's default rule."""
    import cacheward as cw

    return isinstance(error, StatementTimeout) or cw.is_retryable(error)


def guarded_config(sc: Scenario) -> dict[str, Any]:
    """The guarded stack's settings, as the report prints them."""
    rebuild_rows = sc.rows_per_customer
    rate = sc.limiter_share * sc.capacity.rows_per_second / rebuild_rows
    return {
        "ttl": sc.ttl,
        "stale_ttl": sc.stale_ttl,
        "limiter_rate_per_s": round(rate, 2),
        "limiter_burst": max(1.0, round(rate, 2)),
        "limiter_local_share": round(1.0 / sc.processes, 3),
        "attempts": 3,
        "retry_on": "StatementTimeout, and cacheward's default (connection errors, timeouts)",
        "budget": "RetryBudget(ratio=0.2, min_per_second=10)",
        "max_wait": "the library default",
        "timeout": sc.deadline,
        "pagination": f"keyset via cw.collect_pages(page_size={sc.page_size}), resume on failure",
        "why_rate": f"{sc.limiter_share:.0%} of the database's capacity in keyset rebuilds "
        f"({sc.capacity.rows_per_second:,.0f} rows/s / {rebuild_rows} rows)",
    }


#: Makes a guarded stack's limiter: ``factory(stack, scenario, redis_url)``; it may append
#: what it built to ``stack.components`` and keep clients on the stack.
LimiterFactory = Callable[["GuardedStack", Scenario, "str | None"], Any]


def redis_limiter(stack: GuardedStack, sc: Scenario, redis_url: str | None) -> Any:
    """The default limiter: one ``RedisTokenBucket`` for all processes (without L2, local)."""
    import cacheward as cw

    cfg = guarded_config(sc)
    if redis_url is not None:
        import redis

        stack.client = redis.Redis.from_url(
            redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        stack.components.append("RedisTokenBucket")
        # fallback_share: the documented advice, 1 / number of processes.
        return cw.RedisTokenBucket(
            stack.client,
            name="db",
            rate=cfg["limiter_rate_per_s"],
            burst=cfg["limiter_burst"],
            fallback_share=cfg["limiter_local_share"],
            prefix=KEY_PREFIX + "bucket",
        )
    stack.components.append("TokenBucket (per process)")
    return cw.TokenBucket(
        rate=cfg["limiter_rate_per_s"] / sc.processes,
        burst=max(1.0, cfg["limiter_burst"] / sc.processes),
    )


class GuardedStack:
    """``cw.guard`` over ``[MemoryLayer, RedisLayer]``, rebuilding with keyset pagination."""

    def __init__(
        self,
        store: Store,
        sc: Scenario,
        *,
        redis_url: str | None,
        limiter: LimiterFactory = redis_limiter,
    ) -> None:
        import cacheward as cw

        global _STORE
        _STORE = store
        self.sc = sc
        self.components: list[str] = ["guard", "collect_pages"]
        self.memory = cw.MemoryLayer(maxsize=4096)
        layers: list[Any] = [self.memory]
        self.client: Any = None
        if redis_url is not None:
            layers.append(
                cw.RedisLayer.from_url(redis_url, prefix=LAYER_PREFIX, namespace="cacheward")
            )
            self.components.append("RedisLayer")
        page_size = sc.page_size

        def rebuild(customer: int) -> str:
            items = cw.collect_pages(functools.partial(keyset_page, customer), page_size=page_size)
            return assemble(customer, items)

        rebuild.__qualname__ = "incident.config"
        self.fn = cw.guard(
            ttl=sc.ttl,
            stale_ttl=sc.stale_ttl,
            layers=layers,
            limiter=limiter(self, sc, redis_url),
            attempts=3,
            budget=cw.RetryBudget(ratio=0.2, min_per_second=10),
            retry_on=retryable,
            namespace=GUARDED_NAMESPACE,
            timeout=sc.deadline,
        )(rebuild)
        self.get = self.fn
        self.layers = layers

    def flush(self) -> None:
        self.memory.clear()

    def close(self) -> None:
        for _ in range(200):  # refreshes of stale entries still running: at most 10 s
            if self.fn.stats().cache.in_flight == 0:
                break
            time.sleep(0.05)
        for layer in self.layers[1:]:
            layer.close()
        if self.client is not None:
            self.client.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"components": self.components}
        try:
            out.update(dataclasses.asdict(self.fn.stats()))
        except Exception as exc:  # a stats failure must not lose the run's figures
            out["stats_error"] = repr(exc)
        return out


def _build_guarded(store: Store, sc: Scenario, redis_url: str | None) -> Stack:
    return GuardedStack(store, sc, redis_url=redis_url)


def _prefill_guarded(sc: Scenario, store: Store, redis_url: str, written: dict[int, float]) -> None:
    """cacheward's own code writes the entries (so the format is its own), on a fake clock."""
    import cacheward as cw
    from cacheward.testing import FakeClock

    layer = cw.RedisLayer.from_url(redis_url, prefix=LAYER_PREFIX, namespace="cacheward")
    # One cached function (one owner of the namespace on the layer), its clock moved to each
    # entry's write time in turn.
    clock = FakeClock(start=0.0)
    now = {"stamp": 0.0}

    def rebuild(customer: int) -> str:
        items = [tuple(r) for r in _all_rows(store, customer, sc.page_size)]
        return f"{now['stamp']:.3f}|" + assemble(customer, items).split("|", 1)[1]

    fn = cw.cached(
        ttl=sc.ttl,
        stale_ttl=sc.stale_ttl,
        layers=[layer],
        namespace=GUARDED_NAMESPACE,
        clock=clock,
        cross_process=False,
    )(rebuild)
    for customer, stamp in sorted(written.items(), key=lambda item: item[1]):
        clock.advance(max(0.0, stamp - clock.time()))
        now["stamp"] = stamp
        fn(customer)
    layer.close()  # waits for the writes the calls started in the background


register(
    StackSpec(
        name="guarded",
        label="cacheward",
        summary="cacheward's guard(): memory + Redis layers, a shared token bucket, "
        "a retry budget, keyset pagination",
        build=_build_guarded,
        prefill=_prefill_guarded,
        config=guarded_config,
    )
)
