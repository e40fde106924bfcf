"""The two plan performers and every op's two colours agree with each other.

``perform`` and ``aperform`` are the one hand-written sync/async pair of the read path, and each
op's ``sync`` / ``aio`` the small ones; these tests run the same plans and ops through both and
compare everything observable.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cacheward._readpath as rp
from cacheward._core.entry import make_entry
from cacheward._core.keys import CacheKey, local_key
from cacheward._layers import LayerBreaker
from cacheward._plan import Op, Plan, aperform, perform


class Echo(Op):
    """Returns its value, or raises it if it is an exception."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def sync(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    async def aio(self) -> Any:
        await asyncio.sleep(0)
        return self.sync()


def script_plan(steps: list[Any], trace: list[Any]) -> Plan[Any]:
    """Yields one op per step; records what came back; catches every other error."""
    for index, step in enumerate(steps):
        try:
            trace.append(("got", (yield Echo(step))))
        except ValueError as exc:  # noqa: PERF203
            trace.append(("caught", str(exc)))
            if index % 3 == 0:
                raise KeyError(index) from exc
    return ("done", len(steps))


steps = st.lists(
    st.one_of(st.integers(), st.text(max_size=3), st.builds(ValueError, st.text(max_size=3))),
    max_size=8,
)


def outcome(run: Any) -> tuple[Any, ...]:
    try:
        return ("returned", run())
    except KeyError as exc:
        return ("raised", exc.args)


@given(steps)
def test_perform_and_aperform_agree(plan_steps: list[Any]) -> None:
    sync_trace: list[Any] = []
    async_trace: list[Any] = []
    sync = outcome(lambda: perform(script_plan(plan_steps, sync_trace)))
    aio = outcome(lambda: asyncio.run(aperform(script_plan(plan_steps, async_trace))))
    assert sync == aio
    assert sync_trace == async_trace


def test_the_agreement_check_catches_a_performer_that_swallows_errors() -> None:
    """The sibling: a performer that sends ``None`` instead of throwing differs."""

    def lossy(plan: Plan[Any]) -> Any:
        try:
            op = plan.send(None)
            while True:
                try:
                    result = op.sync()
                except BaseException:
                    result = None
                op = plan.send(result)
        except StopIteration as stop:
            return stop.value

    plan_steps: list[Any] = [ValueError("x")]
    good: list[Any] = []
    bad: list[Any] = []
    assert outcome(lambda: perform(script_plan(plan_steps, good))) != outcome(
        lambda: lossy(script_plan(plan_steps, bad))
    )


class Recorder:
    """A layer recording each method call, sync or async, by its sync name."""

    name = "recorder"
    local = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        name = method[1:] if method.startswith("a") and method[1:] in SYNC_NAMES else method

        def sync(*args: Any, **kwargs: Any) -> str:
            self.calls.append((name, args, kwargs))
            return name

        async def aio(*args: Any, **kwargs: Any) -> str:
            return sync(*args, **kwargs)

        return aio if name != method else sync


SYNC_NAMES = {
    "get", "set", "delete", "lease", "publish", "release_lease", "fence", "fence_tags", "clear",
    "probe",
}  # fmt: skip


KEY = CacheKey(local_key(("k",), {}, ("k",)), "ns:v1", ("k",), {}, ("k",))
ENTRY = make_entry(1, now=0.0, ttl=1, stale_ttl=0, stale_if_error=0, jitter=0, draw=0)


def layer_ops(guarded: rp.GuardedLayer) -> list[rp.LayerOp]:
    key, entry = KEY, ENTRY
    return [
        rp.Get(guarded, key),
        rp.Probe(guarded, key),
        rp.Put(guarded, key, entry),
        rp.Delete(guarded, key),
        rp.Lease(guarded, key, 2.0),
        rp.Publish(guarded, key, entry, 7, 2.0),
        rp.Release(guarded, key, 7),
        rp.Fence(guarded, key),
        rp.ReplayFence(guarded, key),
        rp.ReplayDelete(guarded, key),
        rp.MarkFence(guarded, ("t:customer:1", "c:ns:v1")),
        rp.ReplayMarkFence(guarded, ("t:customer:1",)),
        rp.Clear(guarded, key),
        rp.ReplayClear(guarded, key),
    ]


def test_every_layer_op_does_the_same_in_both_colours() -> None:
    from cacheward._clock import SYSTEM_CLOCK

    results = {}
    for colour in ("sync", "aio"):
        layer = Recorder()
        guarded = rp.GuardedLayer(
            layer, SYSTEM_CLOCK, rp.Counters(), LayerBreaker(failures=3, reset=1.0), "ns:v1"
        )
        got = [
            op.sync() if colour == "sync" else asyncio.run(op.aio()) for op in layer_ops(guarded)
        ]
        results[colour] = (got, layer.calls)
    assert results["sync"] == results["aio"]
    # Every concrete layer op is in the list above.
    concrete = {c for c in vars(rp).values() if inspect.isclass(c) and issubclass(c, rp.LayerOp)}
    assert concrete - {rp.LayerOp} == {type(op) for op in layer_ops(guarded)}


@pytest.mark.parametrize("error", [TimeoutError("t"), ConnectionError("c")])
def test_a_failing_layer_op_is_a_miss_in_both_colours(error: Exception) -> None:
    from cacheward._clock import SYSTEM_CLOCK

    class Failing:
        name = "failing"
        local = False

        def get(self, key: Any) -> Any:
            raise error

        async def aget(self, key: Any) -> Any:
            raise error

    for colour in ("sync", "aio"):
        counters = rp.Counters()
        breaker = LayerBreaker(failures=3, reset=1)
        guarded = rp.GuardedLayer(Failing(), SYSTEM_CLOCK, counters, breaker, "n")
        op = layer_ops(guarded)[0]
        got = op.sync() if colour == "sync" else asyncio.run(op.aio())
        assert got is rp.MISSING
        assert counters.layer_errors == 1
