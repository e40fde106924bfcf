"""Tags and ``cache_clear`` (issue 13 item 5): in one process, and on a real Redis with real
processes. Each mechanism's test has a sibling that switches it off and shows the check
catches the failure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheward as cw
from cacheward._background import drain
from cacheward._core.tags import TagIndex, check_tags_setting, fenced, stamp_of, tags_of
from cacheward._pending import Pending, book_of
from cacheward._readpath import Driver
from cacheward.testing import FakeClock
from servers import RedisServer, TcpProxy, _bindable
from tags_worker import NoMarksLayer, make

WORKER = Path(__file__).with_name("tags_worker.py")


# --- the pure parts -----------------------------------------------------------------------


def test_tags_setting_is_checked_at_decoration() -> None:
    for bad in (123, "customers", [1], [""], ["x" * 257]):
        with pytest.raises((cw.ConfigurationError, cw.ConfigurationTypeError), match="tags="):
            cw.cached(ttl=1, tags=bad)  # type: ignore[arg-type]
    assert check_tags_setting(["a", "b", "a"]) == ("a", "b")
    assert check_tags_setting([]) is None


def test_a_tags_function_must_return_a_list_of_str() -> None:
    assert tags_of(lambda c: [f"customer:{c}"], ("c1",), {}) == ("customer:c1",)
    with pytest.raises(cw.ConfigurationTypeError, match="the result of tags="):
        tags_of(lambda c: f"customer:{c}", ("c1",), {})

    @cw.cached(ttl=60, tags=lambda c: c)
    def load(c: str) -> str:
        return c

    with pytest.raises(cw.ConfigurationTypeError, match="tags="):
        load("c1")


def test_invalidate_tags_refuses_what_is_not_a_tag() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match="invalidate_tags"):
        cw.invalidate_tags(1)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="invalidate_tags"):
        cw.invalidate_tags("")
    assert cw.invalidate_tags()  # nothing to do: done


def test_tags_need_shared_layers_that_support_them() -> None:
    class Plain:
        name = "plain"
        local = False

        def get(self, key: Any) -> Any:
            return None

        def set(self, key: Any, entry: Any) -> None: ...
        def delete(self, key: Any) -> None: ...
        def clear(self) -> None: ...

    with pytest.raises(cw.ConfigurationError, match=r"tags= needs .* layers\[1\] \(plain\)"):
        cw.cached(ttl=1, layers=[cw.MemoryLayer(), Plain()], tags=["t"], namespace="plain")(
            lambda: 1
        )
    with pytest.raises(cw.ConfigurationError, match=r"layers\[0\] \(plain\) has no tags"):
        cw.invalidate_tags("t", layers=[Plain()])


def test_an_entry_is_fenced_by_a_mark_at_or_above_its_stamp() -> None:
    assert stamp_of(10.0, 0.0) == 10_000_000.0  # no lease: created, in microseconds
    assert stamp_of(10.0, 5.0) == 5.0  # the lease's token: when its rebuild started
    assert fenced(5.0, [None, b"5"])
    assert not fenced(5.0, [None, b"4", b"garbage"])


def test_the_tag_index_forgets_keys_no_longer_held() -> None:
    index = TagIndex(bound=4)
    held = {"a", "b"}
    for key in "abcdef":
        index.add(key, ("t",), held.__contains__)
    assert len(index) <= 4
    assert index.pop(["t"]) >= {"a", "b"}
    assert len(index) == 0


# --- in one process (memory layer only, fake clock) ------------------------------------------


def two_tagged(clock: FakeClock) -> tuple[Any, Any, list[str], dict[str, str]]:
    calls: list[str] = []
    truth = {"c1": "old", "c2": "old"}

    @cw.cached(ttl=60, clock=clock, tags=lambda c: [f"customer:{c}"])
    def users(c: str) -> str:
        calls.append(f"users:{c}")
        return f"users:{truth[c]}"

    @cw.cached(ttl=60, clock=clock, tags=lambda c: [f"customer:{c}", "invoices"])
    def invoices(c: str) -> str:
        calls.append(f"invoices:{c}")
        return f"invoices:{truth[c]}"

    return users, invoices, calls, truth


def _across_functions() -> tuple[list[str], list[str]]:
    users, invoices, calls, truth = two_tagged(FakeClock())
    for c in ("c1", "c2"):
        users(c), invoices(c)
    truth["c1"] = "new"
    assert cw.invalidate_tags("customer:c1", layers=[])  # memory layers only
    got = [users("c1"), invoices("c1"), users("c2"), invoices("c2")]
    return got, calls[4:]


def test_invalidate_tags_drops_every_function_s_entries_carrying_the_tag() -> None:
    got, fetched = _across_functions()
    assert got == ["users:new", "invoices:new", "users:old", "invoices:old"]
    assert fetched == ["users:c1", "invoices:c1"]  # c2's entries were left alone


def test_sibling_without_the_local_drop_the_old_values_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Driver, "drop_tags", lambda self, tags: None)
    got, fetched = _across_functions()
    assert got[:2] == ["users:old", "invoices:old"]
    assert fetched == []


def _fetch_in_flight() -> tuple[str, str, int]:
    """A fetch reads the old data, then the data changes and its tag is invalidated while the
    fetch is still running. Returns (what its caller got, the next call's value, fetches)."""
    truth = {"c1": "old"}
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @cw.cached(ttl=60, tags=lambda c: [f"customer:{c}"])
    def load(c: str) -> str:
        value = truth[c]
        calls.append(value)
        started.set()
        assert release.wait(10)
        return value

    got: list[str] = []
    caller = threading.Thread(target=lambda: got.append(load("c1")))
    caller.start()
    assert started.wait(10)
    truth["c1"] = "new"
    cw.invalidate_tags("customer:c1", layers=[])
    release.set()
    caller.join(10)
    return got[0], load("c1"), len(calls)


def test_a_tag_invalidation_fences_a_fetch_in_flight_in_this_process() -> None:
    got, after, fetches = _fetch_in_flight()
    assert got == "old"  # its caller gets it...
    assert after == "new"  # ...but it is not stored: the next call fetches the new data
    assert fetches == 2


def test_sibling_without_recording_tags_before_the_fetch_the_old_value_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TagIndex, "add", lambda self, local, tags, held: None)
    got, after, fetches = _fetch_in_flight()
    assert (got, after, fetches) == ("old", "old", 1)


def test_cache_clear_drops_one_function_s_entries_only() -> None:
    clock = FakeClock()
    users, invoices, calls, truth = two_tagged(clock)
    users("c1"), users("c2"), invoices("c1")
    truth.update(c1="new", c2="new")
    assert users.cache_clear()
    assert [users("c1"), users("c2"), invoices("c1")] == ["users:new", "users:new", "invoices:old"]
    assert users.stats().clears == 1


def test_async_tags_and_clear() -> None:
    truth = {"c1": "old"}

    @cw.cached(ttl=60, tags=["all"])
    async def load(c: str) -> str:
        return truth[c]

    async def main() -> list[str]:
        first = await load("c1")
        truth["c1"] = "new"
        second = await load("c1")
        assert await cw.ainvalidate_tags("all", layers=[])
        third = await load("c1")
        truth["c1"] = "newer"
        assert await load.cache_clear()
        return [first, second, third, await load("c1")]

    assert asyncio.run(main()) == ["old", "old", "new", "newer"]


# --- real Redis, real processes -------------------------------------------------------------

redis_only = pytest.mark.redis


def _port() -> int:
    for port in range(13100, 13999):  # this helper's port range
        if _bindable(port):
            return port
    raise RuntimeError("no free port in 13100-13999")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    RedisServer.require()
    with RedisServer.started(port=_port()) as srv:
        yield srv


OPENED: list[Any] = []


@pytest.fixture
def space(server: RedisServer) -> Iterator[str]:
    yield f"tags{uuid.uuid4().hex[:10]}"
    while OPENED:
        OPENED.pop().close()


def here(
    server: RedisServer, space: str, option: str = "", url: str = "", **layer_settings: Any
) -> Any:
    """This process's copy of the workers' two functions (fresh layers)."""
    layer, data, _, users, invoices = make(url or server.url, space, option, **layer_settings)
    OPENED.extend([layer, data])
    return layer, data, users, invoices


def run(server: RedisServer, space: str, mode: str, option: str = "") -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), server.url, space, mode, option]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()


def eventually(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def _shared(server: RedisServer, space: str, reader: str) -> tuple[str, list[str]]:
    """This process caches both functions for c1 and c2 in Redis, the data changes, c1's tag
    is invalidated; then a fresh process reads. Returns (what it read, this process's reads)."""
    layer, data, users, invoices = here(server, space)
    data.set(f"truth:{space}", "old")
    for c in ("c1", "c2"):
        users(c), invoices(c)
    assert drain(layer, 5.0)
    data.set(f"truth:{space}", "new")
    assert cw.invalidate_tags("customer:c1", layers=[layer]).done
    assert layer.stats().tag_fences == 1  # one script, whatever the number of entries
    fresh = finish(run(server, space, "read", reader))
    return fresh, [users("c1"), invoices("c1"), users("c2")]


@redis_only
def test_a_tag_invalidation_reaches_every_function_layer_and_process(
    server: RedisServer, space: str
) -> None:
    fresh, ours = _shared(server, space, "")
    assert ours == ["users:new", "invoices:new", "users:old"]  # c2 untouched
    assert fresh == "users:new invoices:new"  # another process: the shared layer's marks


@redis_only
def test_sibling_a_reader_that_ignores_the_marks_gets_the_old_values(
    server: RedisServer, space: str
) -> None:
    fresh, _ = _shared(server, space, "nomarks")
    assert fresh == "users:old invoices:old"


def _rebuild_race(server: RedisServer, space: str, option: str) -> tuple[str, str]:
    """Another process rebuilds users("c1") for 1.5 s; meanwhile the data changes and the tag
    is invalidated here; then a fresh process reads. (The rebuilding process hears of the
    invalidation on the backplane too, and does not store its result either: the sibling
    switches both off.)"""
    layer, data, _, _ = here(server, space)
    data.set(f"truth:{space}", "old")
    rebuild = run(server, space, "rebuild", "off" if option else "")
    eventually(lambda: data.get(f"started:{space}") is not None, 30)
    data.set(f"truth:{space}", "new")
    assert cw.invalidate_tags("customer:c1", layers=[layer]).done
    got = finish(rebuild)
    return got, finish(run(server, space, "read", option))


@redis_only
def test_a_tag_invalidation_fences_a_rebuild_in_flight_in_another_process(
    server: RedisServer, space: str
) -> None:
    got, fresh = _rebuild_race(server, space, "")
    assert got == "users:old"  # the rebuild reached its own caller...
    assert fresh == "users:new invoices:new"  # ...and was stored nowhere


@redis_only
def test_sibling_without_marks_the_rebuild_stores_the_old_value(
    server: RedisServer, space: str
) -> None:
    got, fresh = _rebuild_race(server, space, "nomarks")
    assert got == "users:old"
    assert fresh.startswith("users:old")


def _other_memory_layer(server: RedisServer, space: str, option: str, what: str) -> Any:
    """Another process serves users("c1") from its memory layer; the data changes and the tag
    is invalidated (or users is cleared) here. Returns a function reading what it serves."""
    layer, data, users, _ = here(server, space)
    data.set(f"truth:{space}", "old")
    server_proc = run(server, space, "serve", option)
    OPENED.append(_Stopper(server_proc, data, space))
    eventually(lambda: data.get(f"ready:{space}") is not None, 30)
    eventually(lambda: data.get(f"seen:{space}") == b"users:old")
    data.set(f"truth:{space}", "new")
    if what == "tag":
        assert cw.invalidate_tags("customer:c1", layers=[layer]).done
    else:
        assert users.cache_clear().done
    return lambda: data.get(f"seen:{space}")


class _Stopper:
    def __init__(self, proc: subprocess.Popen[str], data: Any, space: str) -> None:
        self.proc, self.data, self.space = proc, data, space

    def close(self) -> None:
        self.data.set(f"stop:{self.space}", "1")
        try:
            self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@redis_only
@pytest.mark.parametrize("what", ["tag", "clear"])
def test_the_backplane_drops_the_entries_from_other_processes_memory_layers(
    server: RedisServer, space: str, what: str
) -> None:
    seen = _other_memory_layer(server, space, "", what)
    started = time.monotonic()
    eventually(lambda: seen() == b"users:new", 10)
    assert time.monotonic() - started < 5  # well within the TTL (60 s) and l1_max_age


@redis_only
@pytest.mark.parametrize("what", ["tag", "clear"])
def test_sibling_without_the_backplane_the_other_process_serves_the_old_value(
    server: RedisServer, space: str, what: str
) -> None:
    seen = _other_memory_layer(server, space, "nobackplane", what)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert seen() == b"users:old"
        time.sleep(0.05)


def _while_paused(server: RedisServer, space: str) -> tuple[Any, Any, cw.Invalidation]:
    """Cache users("c1") in Redis, hang the path to Redis (a proxy dropping every byte: a
    frozen server would run the command once it thaws, and the invalidation would arrive
    by luck), change the data and invalidate the tag, let Redis answer again."""
    proxy = TcpProxy(server.port).__enter__()
    OPENED.append(types.SimpleNamespace(close=proxy.stop))
    # A short timeout, so that the hang is seen at once.
    layer, data, users, _ = here(
        server, space, url=proxy.url, socket_timeout=0.2, breaker_reset=0.2
    )
    data.set(f"truth:{space}", "old")
    users("c1")
    assert drain(layer, 5.0)
    data.set(f"truth:{space}", "new")
    proxy.blackhole()
    result = cw.invalidate_tags("customer:c1", layers=[layer])
    proxy.heal()
    return layer, users, result


@redis_only
def test_a_tag_invalidation_while_redis_is_frozen_is_kept_and_replayed(
    server: RedisServer, space: str
) -> None:
    layer, users, result = _while_paused(server, space)
    assert not result
    assert result.pending == ("redis",)
    # Nothing in this process reads Redis again: the background replay delivers it.
    eventually(lambda: not book_of(layer))
    assert finish(run(server, space, "read")) == "users:new invoices:new"
    assert users("c1") == "users:new"


@redis_only
def test_a_pending_tag_invalidation_is_replayed_before_this_process_reads(
    server: RedisServer, space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Driver, "schedule_replay", lambda self, *args: None)  # no background
    layer, users, result = _while_paused(server, space)
    assert result.pending == ("redis",)
    assert book_of(layer)
    assert users("c1") == "users:new"  # the read replays first, then misses and fetches
    assert not book_of(layer)


@redis_only
def test_sibling_without_keeping_it_other_processes_serve_the_old_value(
    server: RedisServer, space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Pending, "keep_marks", lambda self, names, now, namespace="": None)
    layer, users, result = _while_paused(server, space)
    time.sleep(0.5)  # a replay, had anything been kept
    assert finish(run(server, space, "read")) == "users:old invoices:new"


def _read_elsewhere_after_cache_clear(server: RedisServer, space: str, option: str = "") -> str:
    """``users`` and ``invoices`` cached "old", the data changed, ``users.cache_clear()`` here:
    what another process (the worker's ``read``, with ``option``) then reads."""
    layer, data, users, invoices = here(server, space)
    data.set(f"truth:{space}", "old")
    users("c1"), invoices("c1")
    assert drain(layer, 5.0)
    data.set(f"truth:{space}", "new")
    assert users.cache_clear().done
    return finish(run(server, space, "read", option))


@redis_only
def test_cache_clear_reaches_other_processes_and_leaves_other_functions(
    server: RedisServer, space: str
) -> None:
    assert _read_elsewhere_after_cache_clear(server, space) == "users:new invoices:old"


@redis_only
def test_sibling_cache_clear_without_marks_is_not_seen_by_other_processes(
    server: RedisServer, space: str
) -> None:
    assert _read_elsewhere_after_cache_clear(server, space, "nomarks") == "users:old invoices:old"


@redis_only
def test_an_entry_written_before_a_mark_is_a_miss_for_every_read_path(
    server: RedisServer, space: str
) -> None:
    """get, lease and put all check the marks (NoMarksLayer, the sibling, checks none)."""
    for kind, expect_fenced in ((cw.RedisLayer, True), (NoMarksLayer, False)):
        layer = kind.from_url(server.url, socket_timeout=2.0, namespace=space)
        OPENED.append(layer)
        key = cw.CacheKey("k", "users:v1", ("k",), {}, ("c",), ("customer:k",))
        token = layer.lease(key, ttl=30).token
        assert token is not None
        layer.set(key, cw.Entry("old", time.time(), 1e12, 1e12))
        layer.fence_tags(("t:customer:k",))
        assert (layer.get(key) is None) is expect_fenced
        assert (layer.lease(key, ttl=30).entry is None) is expect_fenced
        stored = layer.publish(
            key, cw.Entry("rebuilt", time.time(), 1e12, 1e12), token, lease_ttl=30
        )
        assert (stored is None) is expect_fenced
        layer.fence(key)  # clean for the next kind


@redis_only
def test_by_default_invalidate_tags_reaches_the_layers_of_tagged_functions(
    server: RedisServer, space: str
) -> None:
    layer, data, users, _ = here(server, space)
    untagged = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space + "u")
    OPENED.append(untagged)
    cw.cached(ttl=60, layers=[untagged], namespace="plain")(lambda c: c)
    cw.invalidate_tags("customer:c1")  # other tests' tagged functions may still be alive
    assert layer.stats().tag_fences == 1
    assert untagged.stats().tag_fences == 0  # no tagged function uses it: no entry has tags
