"""A child made by ``os.fork()`` while the parent's threads are busy (issue 15 item 6).

Each test forks for real: the child runs a few calls and reports through a pipe as JSON, then
ends with ``os._exit``; the parent reads with a bounded wait and kills a child that hangs (by
its pid). Each test has a sibling that switches the after-fork resets off (in the parent,
before the fork, so the child inherits it) and shows the test catches the defect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward import _forksafe
from cacheward._redis import RedisLayer
from cacheward.testing import FakeClock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: The most the parent waits for a child, and a child for anything (far past what is needed).
BOUND = 10.0


def in_child(body: Callable[[Callable[[str], None]], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in a forked child; its answer (JSON) or ``{"error": ...}``.

    ``body`` gets ``say(text)``, which sends a line to the parent at once (``on_line`` of
    :func:`forked`)."""
    return forked(body, lambda line: None)


def forked(
    body: Callable[[Callable[[str], None]], dict[str, Any]], on_line: Callable[[str], None]
) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock: that is
        # exactly the situation these tests make.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)

            def say(text: str) -> None:
                os.write(write_end, (text + "\n").encode())

            answer = body(say)
        except BaseException as exc:  # reported to the parent
            answer, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        finally:
            with contextlib.suppress(BaseException):
                os.write(write_end, ("=" + json.dumps(answer) + "\n").encode())
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + BOUND
    answer: dict[str, Any] = {"error": "the child did not answer within the bound"}
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
            *lines, rest = data.split(b"\n")
            data = rest
            for line in lines:
                text = line.decode()
                if text.startswith("="):
                    answer = json.loads(text[1:])
                else:
                    on_line(text)
    finally:
        os.close(read_end)
        ended, _ = os.waitpid(pid, os.WNOHANG)
        if not ended:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return answer


class Nothing:
    """A registry that keeps nothing."""

    def add(self, item: object) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return iter(())


@pytest.fixture
def resets_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism removed: the after-fork handler finds nothing to reset."""
    monkeypatch.setattr(_forksafe, "_HOOKS", [])
    monkeypatch.setattr(_forksafe, "_OBJECTS", Nothing())
    monkeypatch.setattr(_forksafe, "_LOCKS", Nothing())


@contextlib.contextmanager
def busy_thread(target: Callable[[], Any]) -> Iterator[None]:
    """``target`` in a thread of the parent (its own FetchTimeout, if any, is beside the
    point: it only has to be busy while the process forks)."""

    def run() -> None:
        with contextlib.suppress(cw.CacheWardError):
            target()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(BOUND)


# --- a flight in progress in the parent ----------------------------------------------------


def flight_in_progress(colour: str) -> dict[str, Any]:
    """The parent's thread leads a fetch of key 1 (blocked) while the process forks; the child
    calls key 1 three times."""
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow(key: int) -> int:
        calls.append(key)
        started.set()
        release.wait(BOUND)
        return key * 2

    if colour == "sync":
        fn: Any = cw.cached(ttl=60, wait_timeout=0.3)(slow)
        leader: Callable[[], Any] = lambda: fn(1)  # noqa: E731
        call: Callable[[], Any] = lambda: fn(1)  # noqa: E731
    else:

        async def aslow(key: int) -> int:
            calls.append(key)
            started.set()
            for _ in range(int(BOUND / 0.01)):
                if release.is_set():
                    break
                await asyncio.sleep(0.01)
            return key * 2

        fn = cw.cached(ttl=60, wait_timeout=0.3)(aslow)
        leader = lambda: asyncio.run(fn(1))  # noqa: E731
        call = lambda: asyncio.run(fn(1))  # noqa: E731

    def child(say: Callable[[str], None]) -> dict[str, Any]:
        release.set()  # the child's own fetches are quick
        calls.clear()
        answers = []
        for _ in range(3):
            try:
                answers.append(call())
            except cw.CacheWardError as exc:  # noqa: PERF203 - three calls
                answers.append(type(exc).__name__)
        return {"answers": answers, "calls": len(calls)}

    with busy_thread(leader):
        assert started.wait(BOUND)
        try:
            return in_child(child)
        finally:
            release.set()


@pytest.mark.parametrize("colour", ["sync", "async"])
def test_a_flight_in_progress_at_fork_is_forgotten_in_the_child(colour: str) -> None:
    answer = flight_in_progress(colour)
    assert answer == {"answers": [2, 2, 2], "calls": 1}


@pytest.mark.parametrize("colour", ["sync", "async"])
@pytest.mark.usefixtures("resets_off")
def test_flight_in_progress_fails_without_the_resets(colour: str) -> None:
    answer = flight_in_progress(colour)
    assert answer == {"answers": ["FetchTimeout"] * 3, "calls": 0}


# --- the refresh pool --------------------------------------------------------------------------


def refresh_after_fork() -> dict[str, Any]:
    """The parent's refresh of key 1 is running (its only refresh slot taken, the shared
    pool's worker busy) when the process forks; in the child key 2 is stale: is it refreshed?"""
    clock = FakeClock()
    started, release = threading.Event(), threading.Event()
    fetched: list[int] = []
    refreshed = threading.Event()

    def fetch(key: int) -> int:
        fetched.append(key)
        if key == 1 and len(fetched) > 2:
            started.set()
            release.wait(BOUND)
        if key == 2 and len(fetched) > 2:
            refreshed.set()
        return key * 10 + len(fetched)

    fn = cw.cached(ttl=10, stale_ttl=1000, clock=clock, max_refreshes=1)(fetch)
    fn(1), fn(2)
    clock.advance(20)
    fn(1)  # stale: its refresh starts, and blocks
    assert started.wait(BOUND)

    def child(say: Callable[[str], None]) -> dict[str, Any]:
        release.set()
        stale = fn(2)  # stale: served, and its refresh starts
        done = refreshed.wait(BOUND / 2)
        for _ in range(int(BOUND / 0.01)):  # the refresh's entry lands in memory
            if not done or fn(2) != stale:
                break
            time.sleep(0.01)
        return {"refreshed": done, "fresh": fn(2) != stale, "skipped": fn.stats().refreshes_skipped}

    try:
        return in_child(child)
    finally:
        release.set()


def test_the_refresh_pool_works_in_the_child() -> None:
    assert refresh_after_fork() == {"refreshed": True, "fresh": True, "skipped": 0}


@pytest.mark.usefixtures("resets_off")
def test_refresh_after_fork_fails_without_the_resets() -> None:
    answer = refresh_after_fork()
    assert answer["refreshed"] is False
    assert answer["fresh"] is False


# --- a lock held by a parent's thread ----------------------------------------------------------


def lock_held_at_fork() -> dict[str, Any]:
    """A parent's thread holds the memory layer's lock while the process forks."""
    layer = cw.MemoryLayer()
    fn = cw.cached(ttl=60, layers=[layer])(lambda key: key * 2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with layer._lock:
            holding.set()
            release.wait(BOUND)

    def child(say: Callable[[str], None]) -> dict[str, Any]:
        done: list[int] = []
        worker = threading.Thread(target=lambda: done.append(fn(4)), daemon=True)
        worker.start()
        worker.join(2.0)
        return {"answers": done}

    with busy_thread(hold):
        assert holding.wait(BOUND)
        try:
            return in_child(child)
        finally:
            release.set()


def test_a_lock_held_at_fork_is_free_in_the_child() -> None:
    assert lock_held_at_fork() == {"answers": [8]}


@pytest.mark.usefixtures("resets_off")
def test_lock_held_at_fork_fails_without_the_resets() -> None:
    assert lock_held_at_fork() == {"answers": []}


# --- the lease owner id ------------------------------------------------------------------------


def lease_across_fork(redis_url: str) -> dict[str, Any]:
    """The parent's thread holds key 1's lease (its fetch blocked) while the process forks;
    the child calls key 1 and tells the parent once it waits (or fetches); then the parent's
    fetch ends and publishes its value."""
    namespace = f"loops-fork-{uuid.uuid4().hex}"
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def fetch(key: int) -> str:
        calls.append(key)
        started.set()
        release.wait(BOUND)
        return f"{os.getpid()}:{key}"

    layer = RedisLayer.from_url(redis_url, namespace=namespace, timeout=0.5)
    fn = cw.cached(ttl=60, layers=[cw.MemoryLayer(), layer], wait_timeout=BOUND / 2)(fetch)

    def child(say: Callable[[str], None]) -> dict[str, Any]:
        calls.clear()
        answers: list[Any] = []
        worker = threading.Thread(target=lambda: answers.append(fn(1)), daemon=True)
        worker.start()
        for _ in range(int(BOUND / 0.01)):
            if fn.stats().lease_waits or calls:
                break
            time.sleep(0.01)
        say("waiting")
        release.set()  # the child's own fetch, if any, ends at once
        worker.join(BOUND / 2)
        return {"answers": answers, "calls": len(calls), "parent": os.getppid()}

    try:
        with busy_thread(lambda: fn(1)):
            assert started.wait(BOUND)
            answer = forked(child, lambda line: release.set())
    finally:
        release.set()
        layer.close()
    return answer


def test_a_child_does_not_take_its_parents_lease_for_its_own(redis_url: str) -> None:
    answer = lease_across_fork(redis_url)
    assert answer["calls"] == 0, answer  # it waited for the parent's value
    assert answer["answers"] == [f"{answer['parent']}:1"]


def test_lease_across_fork_fails_when_the_child_keeps_the_owner_id(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisLayer, "after_fork", lambda self: None)
    answer = lease_across_fork(redis_url)
    assert answer["calls"] == 1, answer  # the same key fetched in both processes at once


# --- the backplane -----------------------------------------------------------------------------


def until(check: Callable[[], bool], seconds: float = BOUND / 2) -> bool:
    """Poll ``check`` until it holds (bounded)."""
    for _ in range(int(seconds / 0.01)):
        if check():
            return True
        time.sleep(0.01)
    return check()


@contextlib.contextmanager
def backplane_stack(redis_url: str) -> Iterator[tuple[Any, Any]]:
    """A memory layer over Redis with the backplane listening; ``c1`` cached as ``"old"``.
    Yields the function and the Redis client holding the data it loads."""
    import redis

    space = f"loops-bp-{uuid.uuid4().hex[:10]}"
    data = redis.Redis.from_url(redis_url)
    data.set(f"truth:{space}", "old")
    layer = RedisLayer.from_url(redis_url, namespace=space, timeout=0.5)

    @cw.cached(ttl=600, layers=[cw.MemoryLayer(), layer], namespace="config")
    def load(customer: str) -> str:
        return (data.get(f"truth:{space}") or b"").decode()

    try:
        assert until(lambda: layer.subscriber().up), "the backplane never subscribed"
        assert load("c1") == "old"
        yield load, (data, f"truth:{space}")
    finally:
        layer.close()
        data.delete(f"truth:{space}")
        data.close()


def parent_hears_the_child(redis_url: str) -> dict[str, Any]:
    """The child changes the data and invalidates ``c1``: does the parent's memory layer drop
    it?"""
    with backplane_stack(redis_url) as (load, (data, truth)):

        def child(say: Callable[[str], None]) -> dict[str, Any]:
            data.set(truth, "new")
            return {"pending": list(load.invalidate("c1").pending)}

        answer = in_child(child)
        answer["parent"] = load("c1") if not until(lambda: load("c1") == "new") else "new"
    return answer


def test_the_parent_hears_a_childs_invalidation(redis_url: str) -> None:
    assert parent_hears_the_child(redis_url) == {"pending": [], "parent": "new"}


def test_parent_hears_the_child_fails_when_the_child_keeps_the_origin(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cacheward._backplane import Stack

    monkeypatch.setattr(Stack, "after_fork", lambda self: None)
    assert parent_hears_the_child(redis_url) == {"pending": [], "parent": "old"}


def child_hears_the_parent(redis_url: str) -> dict[str, Any]:
    """The child holds ``c1`` and listens again; the parent changes the data and invalidates:
    does the child's memory layer drop it?"""
    with backplane_stack(redis_url) as (load, (data, truth)):
        layer = load.invalidate.__self__.backplane_layer.layer

        def child(say: Callable[[str], None]) -> dict[str, Any]:
            listening = until(lambda: layer.subscriber().up)
            before = load("c1")
            say("listening")
            until(lambda: load("c1") == "new")
            return {"listening": listening, "before": before, "after": load("c1")}

        def on_line(line: str) -> None:
            data.set(truth, "new")
            assert not load.invalidate("c1").pending

        return forked(child, on_line)


def test_a_child_hears_its_parents_invalidation(redis_url: str) -> None:
    answer = child_hears_the_parent(redis_url)
    assert answer == {"listening": True, "before": "old", "after": "new"}


def test_child_hears_the_parent_fails_without_a_listening_thread_in_the_child(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cacheward._backplane import Subscriber

    monkeypatch.setattr(Subscriber, "after_fork", lambda self: None)
    answer = child_hears_the_parent(redis_url)
    assert answer == {"listening": True, "before": "old", "after": "old"}


# --- a background replay scheduled in the parent -----------------------------------------------


def replay_after_fork() -> dict[str, Any]:
    """A layer's pending invalidations have a background replay scheduled (a parent's timer)
    when the process forks: may the child schedule its own?"""
    from cacheward._pending import Pending

    book = Pending()
    book.keep(cw.CacheKey("k", "ns", ("k",), {}, ("key",)), now=0.0)
    assert book.claim_replay()  # the parent's timer would release it; it does not exist there
    return in_child(lambda say: {"claimed": book.claim_replay()})


def test_a_child_schedules_its_own_replay() -> None:
    assert replay_after_fork() == {"claimed": True}


@pytest.mark.usefixtures("resets_off")
def test_replay_after_fork_fails_without_the_resets() -> None:
    assert replay_after_fork() == {"claimed": False}


# --- the shared bucket's request ids -----------------------------------------------------------


def bucket_across_fork(redis_url: str) -> dict[str, Any]:
    """A shared bucket of 2 tokens (next to no refill): the child takes twice, then the parent
    tries twice. How many takes got a token, in both processes?"""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    name = f"loops-fork-{uuid.uuid4().hex[:10]}"
    bucket = cw.RedisTokenBucket(client, name=name, rate=0.001, burst=2)

    def took() -> bool:
        try:
            bucket.reserve(0)
        except cw.RateLimited:
            return False
        return True

    try:
        child = in_child(lambda say: {"took": [took(), took()]})
        return {"child": child.get("took", child), "parent": [took(), took()]}
    finally:
        client.delete(f"cacheward:bucket:{{{name}}}")
        client.close()


def test_a_child_and_its_parent_take_distinct_tokens(redis_url: str) -> None:
    assert bucket_across_fork(redis_url) == {"child": [True, True], "parent": [False, False]}


def test_bucket_across_fork_fails_when_the_child_keeps_the_request_ids(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cw.RedisTokenBucket, "after_fork", lambda self: None)
    # Each of the parent's takes repeats a request id the child used: answered as a repeat.
    assert bucket_across_fork(redis_url) == {"child": [True, True], "parent": [True, True]}
