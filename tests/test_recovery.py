"""A cache outage's recovery is not a caller outage (issue 15, Deliver 5), and stays coherent
(issue 13): on a redis-server of the test's own, killed and restarted empty, or flushed.

While the backplane's channel is down (or just after it came back) an in-process entry is
re-validated with one read of Redis. An entry Redis *lost* (restart, ``FLUSHALL``) with no sign
of an invalidation is kept as its key's fallback: a caller whose backend refuses gets it. An
entry really *invalidated* — by another process, by one whose invalidation was kept pending
while Redis was down and replayed after the restart, by a tag — is never served. Each has a
sibling that switches the mechanism back to what it was (gone = invalidated; the memory layer
emptied on reconnect) or wrong the other way (gone = lost), and is caught.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._backplane import Stack
from cacheward.testing import FakeClock
from servers import RedisServer

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("recovery_worker.py")


class Refused(Exception):
    """The backend refuses (a limiter's refusal, an overloaded database)."""


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.01)


class Service:
    """This process: ``config(customer)`` over a memory layer and a RedisLayer (backplane on),
    sync or async, on a fake clock that starts at the wall clock (Redis marks are stamped
    with the server's clock)."""

    def __init__(self, server: RedisServer, space: str, *, colour: str) -> None:
        self.clock = FakeClock(start=time.time())
        self.layer = cw.RedisLayer.from_url(
            server.url, namespace=space, socket_timeout=0.5, clock=self.clock
        )
        self.refuse = False
        self.value = "old"
        self.loop = asyncio.new_event_loop() if colour == "async" else None
        settings: dict[str, Any] = {
            "ttl": 600,
            "layers": [cw.MemoryLayer(maxsize=100), self.layer],
            "namespace": "config",
            "clock": self.clock,
            "l1_max_age": 2.0,
            "tags": lambda customer: [f"customer:{customer}"],
        }
        if self.loop is None:

            @cw.cached(**settings)
            def config(customer: str) -> str:
                if self.refuse:
                    raise Refused("the backend refuses")
                return self.value

            self.fn: Any = config
        else:

            @cw.cached(**settings)
            async def aconfig(customer: str) -> str:
                if self.refuse:
                    raise Refused("the backend refuses")
                return self.value

            self.fn = aconfig
        self.driver: Any = self.fn.invalidate.__self__
        until(lambda: self.layer.subscriber().up, "the first subscription")

    def call(self, customer: str = "c1") -> str:
        """What a caller gets: the value, or the name of the error raised."""
        try:
            if self.loop is not None:
                return str(self.loop.run_until_complete(self.fn(customer)))
            return str(self.fn(customer))
        except Exception as exc:
            return type(exc).__name__

    def written(self) -> None:
        from cacheward._background import drain

        assert drain(self.layer, 5.0)
        if self.loop is not None:
            self.loop.run_until_complete(asyncio.sleep(0.05))  # the fetch task's writes

    def channel_down(self) -> None:
        """The backplane's channel is lost for good (nothing this process misses is heard)."""
        self.layer._stop_subscriber()
        stack = self.driver.backplane
        assert stack is not None
        stack.guard()

    def reachable(self) -> None:
        """Redis answers this process's layer again (a command on each client's pool drops
        the connections the restart broke; the read path's own commands then succeed)."""

        async def aping() -> None:
            await self.layer._async().ping()

        def ping() -> bool:
            try:
                if self.loop is None:
                    self.layer._sync().ping()
                else:
                    self.loop.run_until_complete(aping())
            except Exception:
                return False
            return True

        until(ping, "a PING")

    def stats(self) -> Any:
        return self.fn.stats()

    def close(self) -> None:
        self.layer.close()
        if self.loop is not None:
            self.loop.run_until_complete(self.layer.aclose())
            self.loop.close()


@pytest.fixture
def service_factory(server: RedisServer) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(colour: str = "sync") -> Service:
        made.append(Service(server, f"rc{uuid.uuid4().hex[:10]}", colour=colour))
        return made[-1]

    yield make
    for service in made:
        service.close()


class Worker:
    """Another process with the same cached function (``recovery_worker.py``)."""

    def __init__(self, server: RedisServer, space: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), server.url, space],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "ready"

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise AssertionError(f"the worker ended: {self.proc.communicate()[1]}")
        return line

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def worker_factory(server: RedisServer) -> Iterator[Callable[[Service], Worker]]:
    made: list[Worker] = []

    def make(service: Service) -> Worker:
        made.append(Worker(server, service.layer.namespace))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def gone_is(monkeypatch: pytest.MonkeyPatch, verdict: bool) -> None:
    """Switch the mechanism: an entry gone from Redis is always (``True``: the rule before
    this fix) or never (``False``) taken as invalidated, whatever Redis's marks say."""
    monkeypatch.setattr("cacheward._readpath.invalidated", lambda **_: verdict)


def old_resync(self: Stack, *, lost: bool = True) -> None:
    """The reconnect before this fix: the memory layer emptied."""
    if lost:
        self.l1.clear()
    self.checked.clear()
    self.guarded = False
    self.set_lookup(self.fast)


# --- a lost entry is a fallback: callers whose backend refuses get it ------------------------


def after_loss_with_channel_down(service: Service, server: RedisServer, fault: str) -> str:
    """``c1`` held; the channel down; Redis restarted empty (or flushed); the backend refuses;
    ``l1_max_age`` later a caller asks (its hit is re-validated): what it gets."""
    assert service.call() == "old"
    service.written()
    service.channel_down()
    if fault == "restart":
        server.restart()
    else:
        server.flushall()
    service.reachable()
    service.refuse = True
    service.clock.advance(2.5)
    return service.call()


@pytest.mark.parametrize("colour", ["sync", "async"])
@pytest.mark.parametrize("fault", ["restart", "flushall"])
def test_after_redis_lost_the_entry_a_refused_fetch_serves_the_old_value(
    server: RedisServer, service_factory: Callable[..., Service], fault: str, colour: str
) -> None:
    service = service_factory(colour)
    assert after_loss_with_channel_down(service, server, fault) == "old"
    stats = service.stats()
    assert (stats.rechecks, stats.suspects, stats.suspects_served) == (1, 1, 1)
    assert stats.hits == 0  # served as a fallback, never fresh
    service.refuse, service.value = False, "new"
    service.clock.advance(61.0)  # past the key's back-off (backoff_max=60)
    assert service.call() == "new"  # the next caller fetches: the data


@pytest.mark.parametrize("fault", ["restart", "flushall"])
def test_sibling_gone_taken_as_invalidated_the_refused_callers_get_errors(
    server: RedisServer,
    service_factory: Callable[..., Service],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    gone_is(monkeypatch, True)
    assert after_loss_with_channel_down(service_factory(), server, fault) == "Refused"


def after_restart_and_reconnect(service: Service, server: RedisServer) -> str:
    """``c1`` held; Redis killed, then restarted empty; the channel comes back by itself; the
    backend refuses; a caller asks at once (no clock moved): what it gets."""
    assert service.call() == "old"
    service.written()
    subscriber = service.layer.subscriber()
    server.kill()
    until(lambda: not subscriber.up, "the channel's loss")
    server.restart()
    until(lambda: subscriber.up, "the channel's return")
    service.reachable()
    service.refuse = True
    return service.call()


def test_after_a_reconnect_entries_are_kept_and_each_re_validated_once(
    server: RedisServer, service_factory: Callable[..., Service]
) -> None:
    service = service_factory()
    assert after_restart_and_reconnect(service, server) == "old"
    stats = service.stats()
    assert (stats.rechecks, stats.suspects, stats.suspects_served) == (1, 1, 1)
    stack = service.driver.backplane
    assert not stack.unverified
    assert not stack.guarded
    assert service.call() == "old"
    assert service.stats().rechecks == 1  # once


def test_sibling_the_memory_layer_emptied_on_reconnect_gives_errors(
    server: RedisServer, service_factory: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Stack, "resync", old_resync)
    assert after_restart_and_reconnect(service_factory(), server) == "Refused"


def test_after_a_reconnect_a_current_entry_costs_one_read_and_no_fetch(
    server: RedisServer, service_factory: Callable[..., Service]
) -> None:
    service = service_factory()
    assert service.call() == "old"
    service.written()
    subscriber, stack = service.layer.subscriber(), service.driver.backplane
    server.command("CLIENT", "KILL", "TYPE", "pubsub")  # the channel drops; Redis keeps its data
    until(lambda: bool(stack.unverified) and subscriber.up, "the reconnect")
    service.refuse = True
    assert service.call() == "old"
    stats = service.stats()
    assert (stats.rechecks, stats.fetches, stats.suspects, stats.hits) == (1, 1, 0, 1)
    assert not stack.unverified


# --- an invalidated entry is never served, even when the backend refuses ---------------------


def after_invalidation_with_channel_down(
    service: Service, worker: Worker, server: RedisServer, how: str
) -> str:
    """``c1`` held; the channel down; another process invalidates ``c1`` (``key``), tags it
    (``tag``), or invalidates it while Redis is dead, then replays it after Redis restarted
    empty (``replayed``); the backend refuses; ``l1_max_age`` later a caller asks."""
    assert service.call() == "old"
    service.written()
    service.channel_down()
    if how == "key":
        assert worker.ask("invalidate c1") == "done"
    elif how == "tag":
        assert worker.ask("tags customer:c1") == "done"
    else:
        server.kill()
        assert worker.ask("invalidate c1") == "pending"
        server.restart()
        assert worker.ask("replay") == "replayed"
    service.reachable()
    service.refuse = True
    service.clock.advance(2.5)
    return service.call()


@pytest.mark.parametrize("how", ["key", "tag", "replayed"])
def test_an_entry_invalidated_elsewhere_is_never_served(
    server: RedisServer,
    service_factory: Callable[..., Service],
    worker_factory: Callable[[Service], Worker],
    how: str,
) -> None:
    service = service_factory()
    got = after_invalidation_with_channel_down(service, worker_factory(service), server, how)
    assert got == "Refused"  # not "old": the caller gets the backend's refusal
    stats = service.stats()
    assert (stats.rechecks, stats.suspects, stats.stale_on_error) == (1, 0, 0)


@pytest.mark.parametrize("how", ["key", "tag", "replayed"])
def test_sibling_gone_taken_as_lost_serves_the_invalidated_value(
    server: RedisServer,
    service_factory: Callable[..., Service],
    worker_factory: Callable[[Service], Worker],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    gone_is(monkeypatch, False)
    service = service_factory()
    got = after_invalidation_with_channel_down(service, worker_factory(service), server, how)
    assert got == "old"


# --- the reconnect's bookkeeping (no Redis: the backplane's stack alone) ---------------------


def held_stack() -> tuple[FakeClock, cw.MemoryLayer, Stack, list[Any]]:
    """A stack whose memory layer holds ``a`` and ``b`` (made at 0 s), its channel lost at 1 s
    and back at 2 s; ``lookups`` records every lookup the stack swaps in."""
    from cacheward._core.entry import Entry

    clock = FakeClock(start=0.0)
    l1 = cw.MemoryLayer()
    stack = Stack(l1, "ns:v1", "ch", clock.time, 5.0)
    lookups: list[Any] = []
    stack.set_lookup = lookups.append
    for local in ("a", "b"):
        l1.set(_key(local), Entry(local, 0.0, 600.0, 600.0))
    clock.advance(1.0)
    stack.guard()
    clock.advance(1.0)
    stack.resync(lost=True)
    return clock, l1, stack, lookups


def test_after_a_reconnect_each_held_entry_is_handed_for_re_validation_once() -> None:
    from cacheward._backplane import Recheck

    clock, l1, stack, lookups = held_stack()
    assert lookups[-1] == stack.relookup
    assert stack.unverified == {"a", "b"}
    assert type(stack.relookup("a")) is Recheck  # young (2 s < l1_max_age), still checked
    stack.mark("a", l1.lookup("a"))  # what Driver.recheck does once it has the answer
    assert type(stack.relookup("a")) is not Recheck
    assert lookups[-1] == stack.relookup  # "b" is still unverified
    # The channel is lost again before "b" was asked for: its check is still owed, although it
    # is younger than l1_max_age counted from the new loss.
    stack.guard()
    assert type(stack.lookup("b")) is Recheck
    clock.advance(1.0)
    stack.resync(lost=False)  # (a first subscription's resync owes nothing new)
    l1.delete(_key("b"))
    stack.prune()  # the subscriber's heartbeat: "b" is gone, nothing is owed
    assert not stack.unverified
    assert lookups[-1] == stack.fast


def test_sibling_a_reconnect_that_forgets_what_it_owes_serves_b_unchecked() -> None:
    from cacheward._backplane import Recheck

    _, _, stack, _ = held_stack()
    stack.unverified.clear()  # the mechanism off: nothing owed after the reconnect
    stack.guard()
    assert type(stack.lookup("b")) is not Recheck  # caught: "b" may have missed its message


def _key(local: str) -> Any:
    from cacheward._core.keys import CacheKey

    return CacheKey(local, "ns:v1", (local,), {}, ())


# --- a property: across losses and reconnects, nothing missed is served unchecked -------------


def served_across_reconnects(
    steps: list[tuple[float, str]], max_age: float, *, owed: bool
) -> list[str]:
    """One process holds ``c1``; its channel is lost and comes back (``lose``, ``back``);
    another process invalidates or rewrites the key (heard while the channel is up, missed
    while it is down). A lookup's :class:`Recheck` reads the truth as ``Driver.recheck``
    does. ``owed=False`` is the sibling: a reconnect that neither empties the memory layer
    nor re-validates it. Returns the violations: a hit served an old value while the channel
    was up, or ``max_age`` or more after the value changed while it was down."""
    from cacheward._backplane import Recheck
    from cacheward._core.entry import Entry

    clock = FakeClock(start=0.0)
    l1 = cw.MemoryLayer()
    stack = Stack(l1, "ns:v1", "ch", clock.time, max_age)
    current: list[Any] = [stack.fast]
    stack.set_lookup = lambda lookup: current.__setitem__(0, lookup)
    key = _key("c1")

    def new_entry(version: int) -> Entry:
        now = clock.time()
        return Entry(version, now, now + 3600, now + 3600)

    versions = 0
    truth: Entry | None = new_entry(0)
    changed_at = 0.0
    l1.set(key, truth)
    up = True
    bad: list[str] = []
    for advance, action in steps:
        clock.advance(advance)
        if action in ("invalidate", "write"):
            versions += 1
            truth = new_entry(versions) if action == "write" else None
            changed_at = clock.time()
            if up:
                l1.delete(key)  # the announcement, heard
        elif action == "lose" and up:
            up = False
            stack.guard()
        elif action == "back" and not up:
            up = True
            stack.resync(lost=True)
            if not owed:
                stack.unverified.clear()
                stack.set_lookup(stack.fast)
        elif action == "hit":
            found = current[0]("c1")
            if type(found) is Recheck:
                if truth is None:
                    l1.delete(key)  # gone there after an invalidation: dropped
                    found = None
                else:
                    l1.set(key, truth)
                    found = truth
                stack.mark("c1", l1.lookup("c1") or found)
            if found is None:  # a miss: the read path fetches the current value
                if truth is None:
                    versions += 1
                    truth = new_entry(versions)
                l1.set(key, truth)
                found = truth
            if truth is not None and found.value != truth.value:
                age = clock.time() - changed_at
                if up or age >= max_age:
                    bad.append(f"t={clock.time()}: {found.value} for {truth.value} ({age} s)")
    return bad


reconnect_step = st.tuples(
    st.floats(min_value=0.0, max_value=3.0),
    st.sampled_from(["hit", "hit", "invalidate", "write", "lose", "back"]),
)
#: Lost, changed unheard, back at once, asked: the change is owed a check.
MISSED = [(0.0, "lose"), (0.5, "write"), (0.1, "back"), (0.1, "hit")]
#: The same, lost again before the key is asked for: still owed, though the entry is younger
#: than ``l1_max_age`` counted from the second loss.
SECOND_LOSS = [(0.0, "lose"), (0.5, "write"), (3.0, "back"), (0.1, "lose"), (0.4, "hit")]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(reconnect_step, max_size=30), st.floats(min_value=0.5, max_value=5.0))
@example(MISSED, 3.0)
@example(SECOND_LOSS, 3.0)
def test_across_losses_and_reconnects_no_missed_change_is_served_unchecked(
    steps: list[tuple[float, str]], max_age: float
) -> None:
    assert served_across_reconnects(steps, max_age, owed=True) == []


def test_sibling_a_reconnect_owing_nothing_serves_the_missed_change() -> None:
    assert served_across_reconnects(MISSED, 3.0, owed=False)


def test_sibling_a_guard_that_forgets_the_owed_checks_serves_the_missed_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cacheward._backplane import Recheck
    from cacheward._core.coherence import needs_check

    def age_only(self: Stack, local: Any) -> Any:
        entry = self.fast(local)
        if entry is None:
            return None
        record = self.checked.get(local)
        checked = record[1] if record is not None and record[0] is entry else None
        since, created, age = self.since, entry.created, self.max_age
        if needs_check(now=self.time(), since=since, created=created, checked=checked, max_age=age):
            return Recheck(entry)
        return entry

    monkeypatch.setattr(Stack, "lookup", age_only)
    assert served_across_reconnects(SECOND_LOSS, 3.0, owed=True)


def test_on_a_cluster_the_probe_reads_the_key_s_own_mark_and_its_tags_marks() -> None:
    """On Redis Cluster a key's entry and own mark share a slot, its tags' marks do not: one
    probe still reads them all (``mget_nonatomic``)."""
    from servers import RedisClusterServers

    with RedisClusterServers.started() as nodes:
        url = f"redis://127.0.0.1:{nodes.startup_nodes[0][1]}/0"
        layer = cw.RedisLayer.from_url(url, socket_timeout=1.0, cluster=True, namespace="rc")

        @cw.cached(ttl=600, layers=[layer], namespace="config", tags=lambda c: [f"t:{c}"])
        def config(customer: str) -> str:
            return "v"

        try:
            key = config.invalidate.__self__.cache_key("c1", ("c1",), {})
            assert config("c1") == "v"
            from cacheward._background import drain

            assert drain(layer, 5.0)  # the write, made in the background
            probed = layer.probe(key)
            assert probed is not None
            assert probed.entry is not None
            assert probed.entry.value == "v"
            assert not probed.fenced
            # (layers=: other tests' tagged functions may still be alive, their servers gone)
            assert cw.invalidate_tags("t:c1", layers=[layer])
            probed = layer.probe(key)
            assert probed is not None
            assert (probed.entry, probed.fenced) == (None, True)
            assert config.invalidate("c1")
            probed = layer.probe(key)
            assert probed is not None
            assert probed.entry is None
            assert probed.marks[0] is not None  # the key's own mark
        finally:
            layer.close()
