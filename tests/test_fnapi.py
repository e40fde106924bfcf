"""Write-through and per-call control (``set``/``refresh``/``get``) and cached methods (issue 13
items 6 and 7), on a FakeClock, in both colours."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock


def make(clock: FakeClock, *, is_async: bool = False, **options: Any) -> Any:
    calls: list[str] = []
    if is_async:

        async def aload(customer: str) -> str:
            calls.append(customer)
            return f"{customer}#{len(calls)}"

        fn: Any = cw.cached(ttl=10, clock=clock, **options)(aload)
    else:

        def load(customer: str) -> str:
            calls.append(customer)
            return f"{customer}#{len(calls)}"

        fn = cw.cached(ttl=10, clock=clock, **options)(load)
    fn.calls = calls
    return fn


def run(is_async: bool, value: Any) -> Any:
    if is_async:

        async def main() -> Any:
            return await value

        return asyncio.run(main())
    return value


@pytest.mark.parametrize("is_async", [False, True])
def test_get_reads_without_fetching_and_says_missing(is_async: bool) -> None:
    clock = FakeClock()
    fn = make(clock, is_async=is_async)
    assert run(is_async, fn.get("a")) is cw.MISSING
    assert not cw.MISSING
    assert fn.calls == []
    assert run(is_async, fn("a")) == "a#1"
    assert run(is_async, fn.get("a")) == "a#1"
    clock.advance(11)  # stale (or expired): a miss for get, which never refreshes
    assert run(is_async, fn.get("a")) is cw.MISSING
    assert fn.calls == ["a"]


@pytest.mark.parametrize("is_async", [False, True])
def test_set_writes_through_and_a_fetch_under_way_is_not_stored(is_async: bool) -> None:
    clock = FakeClock()
    fn = make(clock, is_async=is_async)
    assert run(is_async, fn("a")) == "a#1"
    result = run(is_async, fn.set("written", "a"))
    assert result.done
    assert run(is_async, fn("a")) == "written"
    assert run(is_async, fn.get("a")) == "written"
    assert fn.calls == ["a"]
    assert fn.stats().sets == 1
    clock.advance(11)
    assert run(is_async, fn("a")) == "a#2"  # the written entry expires like any other


def test_set_fences_an_in_process_fetch_under_way() -> None:
    clock = FakeClock()
    holder: list[Any] = []

    @cw.cached(ttl=10, clock=clock)
    def load(customer: str) -> str:
        load.set("written", customer)  # written while this (older) fetch runs
        return "rebuilt"

    holder.append(load)
    assert load("a") == "rebuilt"  # its caller gets its result...
    assert load("a") == "written"  # ...but the written value is what stays


def test_sibling_without_the_fence_the_older_fetch_overwrites_the_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cacheward._core.readthrough import ReadThrough

    monkeypatch.setattr(ReadThrough, "invalidate", lambda self, key: None)
    clock = FakeClock()

    @cw.cached(ttl=10, clock=clock)
    def load(customer: str) -> str:
        load.set("written", customer)
        return "rebuilt"

    assert load("a") == "rebuilt"
    assert load("a") == "rebuilt"  # what the fence prevents


@pytest.mark.parametrize("is_async", [False, True])
def test_refresh_fetches_whatever_the_layers_hold_and_stores(is_async: bool) -> None:
    clock = FakeClock()
    fn = make(clock, is_async=is_async)
    assert run(is_async, fn("a")) == "a#1"
    assert run(is_async, fn.refresh("a")) == "a#2"
    assert run(is_async, fn("a")) == "a#2"
    stats = fn.stats()
    assert (stats.forced_refreshes, stats.fetches, stats.misses) == (1, 2, 1)


@pytest.mark.parametrize("is_async", [False, True])
def test_refresh_failure_raises_and_backs_off(is_async: bool) -> None:
    clock = FakeClock()
    calls: list[int] = []

    def body() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("down")
        return "ok"

    if is_async:

        async def aload(customer: str) -> str:
            return body()

        fn: Any = cw.cached(ttl=10, clock=clock)(aload)
    else:

        def load(customer: str) -> str:
            return body()

        fn = cw.cached(ttl=10, clock=clock)(load)
    assert run(is_async, fn("a")) == "ok"
    with pytest.raises(ConnectionError):
        run(is_async, fn.refresh("a"))
    assert run(is_async, fn("a")) == "ok"  # the entry stays as it was
    with pytest.raises(cw.BackoffActive):
        run(is_async, fn.refresh("a"))  # the key's back-off holds for refreshes too
    assert len(calls) == 2


def test_refresh_of_a_guarded_function_goes_through_its_limiter() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)

    @cw.guard(ttl=10, clock=clock, limiter=bucket, max_wait=0, attempts=1)
    def load(customer: str) -> str:
        return customer

    assert load("a") == "a"
    with pytest.raises(cw.RateLimited):
        load.refresh("a")
    assert load.get("a") == "a"
    assert load.stats().attempts == 1


class Repo:
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.calls: list[str] = []

    @cw.cached(ttl=10, clock=FakeClock())
    def shared(self, customer: str) -> str:
        self.calls.append(customer)
        return f"{self.tenant}:{customer}"

    @cw.cached(ttl=10, clock=FakeClock(), self_key=lambda self: self.tenant)
    def per_tenant(self, customer: str) -> str:
        self.calls.append(customer)
        return f"{self.tenant}:{customer}"

    @cw.cached(ttl=10, clock=FakeClock())
    async def aload(self, customer: str) -> str:
        self.calls.append(customer)
        return f"{self.tenant}:{customer}"


def test_a_method_leaves_self_out_of_the_key_by_default() -> None:
    one, two = Repo("t1"), Repo("t2")
    assert one.shared("c") == "t1:c"
    assert two.shared("c") == "t1:c"  # shared by every instance (documented)
    assert two.calls == []
    assert one.shared.get("c") == "t1:c"
    assert one.shared.invalidate("c").done
    assert two.shared.get("c") is cw.MISSING
    two.shared.set("w", "c")
    assert one.shared("c") == "w"
    assert one.shared.refresh("c") == "t1:c"
    assert Repo.shared(two, "c") == "t1:c"  # through the class: self first
    assert Repo.shared.stats().sets == 1
    assert one.shared.namespace == Repo.shared.namespace


def test_self_key_puts_what_it_returns_in_the_key() -> None:
    one, two, again = Repo("t1"), Repo("t2"), Repo("t1")
    assert one.per_tenant("c") == "t1:c"
    assert two.per_tenant("c") == "t2:c"
    assert again.per_tenant("c") == "t1:c"
    assert again.calls == []
    one.per_tenant.invalidate("c")
    assert again.per_tenant.get("c") is cw.MISSING
    assert two.per_tenant.get("c") == "t2:c"


def test_async_methods_bind_too() -> None:
    repo = Repo("t")

    async def main() -> None:
        assert await repo.aload("c") == "t:c"
        await repo.aload.set("w", "c")
        assert await repo.aload("c") == "w"
        assert await repo.aload.get("c") == "w"
        assert await repo.aload.refresh("c") == "t:c"
        await repo.aload.invalidate("c")
        assert await repo.aload.get("c") is cw.MISSING

    asyncio.run(main())


def test_methods_in_shared_layers_need_no_encoding_of_self() -> None:
    class Holder:
        @cw.cached(ttl=10, layers=[cw.MemoryLayer()], namespace="fnapi.holder")
        def load(self, customer: str) -> str:
            return customer

    assert Holder().load(customer="x") == "x"
    assert Holder().load.get("x") == "x"  # by keyword or by position: one key


def test_unsupported_method_kinds_fail_at_decoration() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match="put @staticmethod above"):

        class A:
            @cw.cached(ttl=1)  # type: ignore[arg-type]
            @staticmethod
            def load(x: str) -> str:
                return x

    with pytest.raises(cw.ConfigurationTypeError, match="classmethod"):

        class B:
            @cw.cached(ttl=1)  # type: ignore[arg-type]
            @classmethod
            def load(cls, x: str) -> str:
                return x

    with pytest.raises(cw.ConfigurationTypeError, match="classmethod"):

        class C:
            @classmethod  # type: ignore[misc]
            @cw.cached(ttl=1)
            def load(cls, x: str) -> str:
                return x

    with pytest.raises(cw.ConfigurationError, match="self_key= is for methods"):

        @cw.cached(ttl=1, self_key=lambda self: 1)
        def plain(x: str) -> str:
            return x

    with pytest.raises(cw.ConfigurationError, match="key= or self_key="):
        cw.cached(ttl=1, key=lambda self, x: x, self_key=lambda self: 1)


def test_staticmethod_above_cached_is_a_plain_function() -> None:
    class D:
        @staticmethod
        @cw.cached(ttl=10)
        def load(x: str) -> str:
            return x

    assert D().load("a") == "a"
    assert D.load.get("a") == "a"
