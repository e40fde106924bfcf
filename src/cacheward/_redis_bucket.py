"""``RedisTokenBucket``: one token bucket for every process, that never fails open.

The arithmetic runs inside Redis (``resources/token_bucket.lua``, loaded once per server and run
with EVALSHA), on the server's clock, so every process shares one bucket. The same refill rule
as :mod:`cacheward._core.bucket`, but without the waiting line: waiters in different processes
simply ask again when the token is due. Where a take goes (Redis or the local share), when to
probe and what is owed after a fallback is decided by :mod:`cacheward._core.fallback`.

Three failure rules matter more than the arithmetic:

- **A call whose outcome is unknown never takes two tokens.** Each take carries a request id;
  the script stores its answer under that id, so a client that sends the same call again (redis-py
  retries a timed-out command on its own) gets the first answer back instead of a second token.
- **A bucket that fails never means "no limit", nor "no backend".** Whatever goes wrong with
  Redis (unreachable, hung, a changed password, a wrong-typed key...), takes go to a local
  :class:`~cacheward.TokenBucket` with ``fallback_share`` of the rate and burst, and only
  :class:`~cacheward.RateLimited` ever reaches the caller: a broken bucket is never counted as a
  broken backend. Every ``probe_interval`` one take tries Redis again.
- **A restart does not add a burst.** Local takes are charged to the shared bucket on the way
  back, and a bucket Redis lost starts empty for every process that had used it.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from typing import Any

from cacheward import _forksafe
from cacheward._checks import check_socket_timeout
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_fraction, duration
from cacheward._core.fallback import FallbackState
from cacheward._errors import ConfigurationError, RateLimited
from cacheward._events import EventKind, emit
from cacheward._limit import TokenBucket
from cacheward._limit import positive_number as _positive_number
from cacheward._rediskit import check_name as _check_name
from cacheward._rediskit import client_kind as _kind
from cacheward._rediskit import script as _script

__all__ = ["RedisTokenBucket", "SharedBucketStats"]

_SCRIPT = "token_bucket.lua"


@dataclasses.dataclass(frozen=True)
class SharedBucketStats:
    """A snapshot of a :class:`RedisTokenBucket`'s counters."""

    mode: str
    """``"shared"`` or ``"fallback"``."""
    shared_takes: int
    """Tokens taken from the shared bucket."""
    fallback_takes: int
    """Tokens taken from the local fallback bucket."""
    refused: int
    """Takes refused by the shared bucket."""
    errors: int
    """Redis calls that failed."""


class RedisTokenBucket:
    """A token bucket in Redis, shared by every process that uses the same ``name``.

    Over any interval of length ``T`` at most ``burst + rate * T`` tokens are taken from it in
    all processes together while every process reaches Redis, a Redis restart included; a
    process that cannot reach Redis takes from a local bucket with ``fallback_share`` of the
    rate and burst instead (so with ``N`` processes, set ``fallback_share`` to about ``1 / N``),
    and charges what it took to the shared bucket when it is back. docs/protection.md states the
    bound with processes cut off.

    Works with ``redis.Redis``, ``redis.asyncio.Redis`` and both ``RedisCluster`` clients (the
    bucket's keys share one hash slot). Use :meth:`reserve` from threads with a sync client and
    :meth:`areserve` from ``async def`` code with an asyncio client; :func:`~cacheward.rate_limit`
    and :func:`~cacheward.guard` pick the right one, and refuse at decoration a bucket whose
    client cannot serve the decorated function.

    Args:
        client: a redis-py client. It must have a ``socket_timeout`` in ``(0, 5]`` seconds (a
            hung Redis must cost one timeout, not minutes); its own retries are harmless (takes
            are idempotent) but each one adds a timeout to the first call that finds Redis hung.
        name: the bucket's name: every process using this name shares the bucket.
        rate: tokens added per second (> 0), for all processes together.
        burst: the most tokens the bucket holds (>= 1; default ``rate``, at least 1).
        fallback_share: the share of ``rate`` and ``burst`` this process uses while Redis is
            unreachable, in ``(0, 1]`` (default 0.1). Never "unlimited".
        probe_interval: how often, while Redis is unreachable, one take tries it again (seconds
            or ``timedelta``; default 1).
        prefix: the first part of the bucket's Redis keys (default ``"cacheward"``).
        clock: the clock for the fallback bucket and the probes (``FakeClock`` in tests).

    Raises:
        ConfigurationError: a setting is invalid, or the client's socket timeout is missing,
            zero or above 5 s.
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_ids",
        "_is_async",
        "_key",
        "_lock",
        "_req_prefix",
        "_state",
        "burst",
        "client",
        "clock",
        "fallback",
        "fallback_share",
        "fallback_takes",
        "last_error",
        "name",
        "probe_interval",
        "rate",
        "refused",
        "shared_takes",
    )

    def __init__(
        self,
        client: Any,
        /,
        *,
        name: str,
        rate: float,
        burst: float | None = None,
        fallback_share: float = 0.1,
        probe_interval: Duration = 1.0,
        prefix: str = "cacheward",
        clock: Clock | None = None,
    ) -> None:
        self._is_async, _ = _kind(client)
        kwargs = dict(client.get_connection_kwargs() or {})
        if kwargs.get("socket_timeout") is None:
            raise ConfigurationError(
                "the Redis client given to RedisTokenBucket has no socket_timeout, so a hung "
                "Redis would block every backend call for minutes; build it with "
                "socket_timeout=0.25, socket_connect_timeout=0.25"
            )
        check_socket_timeout("the client's socket_timeout", kwargs["socket_timeout"])
        self.client = client
        self.name = _check_name("name", name, empty=False)
        prefix = _check_name("prefix", prefix, empty=False)
        self.rate = _positive_number("rate", rate)
        self.burst = max(1.0, self.rate) if burst is None else _positive_number("burst", burst)
        if self.burst < 1.0:
            raise ConfigurationError(f"burst must be >= 1, got {burst!r}")
        share = check_fraction("fallback_share", fallback_share)
        if share <= 0.0:
            raise ConfigurationError(
                "fallback_share must be > 0: a bucket that allows nothing while Redis is down "
                "turns a Redis outage into a backend outage; use about 1 / (number of processes)"
            )
        self.fallback_share = share
        self.probe_interval = duration("probe_interval", probe_interval, allow_zero=False)
        self.clock = check_clock(clock)
        self.fallback = TokenBucket(
            rate=self.rate * share,
            burst=max(1.0, self.burst * share),
            clock=self.clock,
            name=f"{self.name}-fallback",
        )
        # What the local share can hand out after Redis is in fact back and before this
        # process's next probe notices: its burst plus one probe interval of its rate.
        debt_cap = self.fallback.burst + self.fallback.rate * self.probe_interval
        self._state = FallbackState(probe_interval=self.probe_interval, debt_cap=debt_cap)
        # The hash tag {name} puts the bucket and its request ids in one cluster slot.
        self._key = f"{prefix}:bucket:{{{self.name}}}"
        self._req_prefix = f"{self._key}:req:{secrets.token_hex(6)}:"
        self._ids = itertools.count()
        self._args = (repr(self.rate), repr(self.burst))
        self._lock = _forksafe.lock()
        _forksafe.register(self)
        #: Tokens taken from the shared bucket / from the local fallback bucket.
        self.shared_takes = 0
        self.fallback_takes = 0
        #: Takes refused by the shared bucket.
        self.refused = 0
        #: The last error a Redis call raised, as text (``None`` until one fails).
        self.last_error: str | None = None

    def after_fork(self) -> None:
        """In a forked child: request ids of its own. With its parent's prefix and count, a
        child's take would reuse an id the parent uses next, and the script would answer the
        second of the two as a repeat of the first: two tokens handed out, one taken."""
        self._req_prefix = f"{self._key}:req:{secrets.token_hex(6)}:"
        self._ids = itertools.count()

    @property
    def mode(self) -> str:
        """``"shared"`` while Redis answers, ``"fallback"`` from a failed call until a probe
        succeeds."""
        with self._lock:
            return "shared" if self._state.up else "fallback"

    @property
    def errors(self) -> int:
        """Redis calls that failed (each sent this process to the fallback for a while)."""
        with self._lock:
            return self._state.failures

    @property
    def debt(self) -> float:
        """Local takes not yet charged to the shared bucket."""
        with self._lock:
            return self._state.debt

    def check_caller(self, *, asynchronous: bool, where: str) -> None:
        """Refuse, at decoration, a function this bucket's client cannot serve.

        Raises:
            ConfigurationError: an asyncio client for a ``def`` function, or a sync client
                for an ``async def`` one.
        """
        if asynchronous != self._is_async:
            have = "an asyncio" if self._is_async else "a synchronous"
            fn = "an async def" if asynchronous else "a plain def"
            want = "redis.asyncio.Redis" if asynchronous else "redis.Redis"
            raise ConfigurationError(
                f"{where}: RedisTokenBucket {self.name!r} has {have} Redis client and cannot "
                f"serve {fn} function (every take would fail); give it a {want} client"
            )

    # -- the steps shared by the sync and async paths --

    def _begin(self, max_wait: float) -> tuple[tuple[str, str], tuple[str, ...], float] | None:
        """The script's keys and arguments and the debt they carry, or ``None``: take locally."""
        with self._lock:
            state = self._state
            if not state.route(self.clock.monotonic()):
                return None
            debt, seen = state.debt, state.seen
        request_id = f"{self._req_prefix}{next(self._ids)}"
        # Remember the id for as long as a client could plausibly resend the call.
        args = (*self._args, f"{max_wait:.6f}", "30000", repr(debt), "1" if seen else "0")
        return (self._key, request_id), args, debt

    def _failed(self, exc: Exception, max_wait: float, *, claim: bool) -> float:
        with self._lock:
            was_up = self._state.up
            self._state.failed(self.clock.monotonic())
            self.last_error = f"{type(exc).__name__}: {exc}"
        if was_up:  # one event per outage, not one per failed probe
            emit(EventKind.BUCKET_FALLBACK, self.name, error=exc)
        return self._local(max_wait, claim=claim)

    def _answer(self, reply: Any, debt: float, max_wait: float, *, claim: bool) -> float:
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        verdict, _, seconds = text.partition(":")
        wait = 0.0 if text == "0" else _seconds(seconds) if verdict in ("w", "r") else -1.0
        if wait < 0.0:
            # Not an answer of our script: the bucket failed, the caller must not.
            garbled = ValueError(f"unexpected reply {text[:40]!r}")
            return self._failed(garbled, max_wait, claim=claim)
        with self._lock:
            was_up = self._state.up
            self._state.succeeded(debt)
            shared = wait == 0.0
            if shared:
                self.shared_takes += 1
        if not was_up:
            emit(EventKind.BUCKET_SHARED, self.name)
        if shared:
            return 0.0
        if verdict == "w" or claim:
            return wait
        with self._lock:
            self.refused += 1
        raise RateLimited(
            f"no token from {self!r} within max_wait={max_wait:g}s (next token in {wait:.3g}s); "
            "the backend is being called at its configured rate by all processes together",
            retry_after=wait,
        )

    def _local(self, max_wait: float, *, claim: bool) -> float:
        wait = self.fallback.claim() if claim else self.fallback.reserve(max_wait)
        if wait == 0.0:
            with self._lock:
                self.fallback_takes += 1
                self._state.took_locally()
        return wait

    def _sync_only(self) -> None:
        if self._is_async:
            raise ConfigurationError(
                "this RedisTokenBucket has an asyncio client: use it from async def functions "
                "(rate_limit and guard do), or give it a redis.Redis client for threads"
            )

    def _async_only(self) -> None:
        if not self._is_async:
            raise ConfigurationError(
                "this RedisTokenBucket has a synchronous client: use it from plain functions, "
                "or give it a redis.asyncio client for async def functions"
            )

    # -- the Limiter protocol --

    def _take(self, max_wait: float, *, claim: bool) -> float:
        self._sync_only()
        request = self._begin(0.0 if claim else max_wait)
        if request is None:
            return self._local(max_wait, claim=claim)
        keys, args, debt = request
        try:
            reply = _script(_SCRIPT).run(self.client, keys, args)
        except Exception as exc:  # any failure of the bucket is the bucket's, see the module
            return self._failed(exc, max_wait, claim=claim)
        return self._answer(reply, debt, max_wait, claim=claim)

    async def _atake(self, max_wait: float, *, claim: bool) -> float:
        self._async_only()
        request = self._begin(0.0 if claim else max_wait)
        if request is None:
            return self._local(max_wait, claim=claim)
        keys, args, debt = request
        try:
            reply = await _script(_SCRIPT).arun(self.client, keys, args)
        except Exception as exc:  # any failure of the bucket is the bucket's, see the module
            return self._failed(exc, max_wait, claim=claim)
        return self._answer(reply, debt, max_wait, claim=claim)

    def reserve(self, max_wait: float = 0.0) -> float:
        """Take a token (``0.0``), or return how long until one is due (sleep, then :meth:`claim`).

        Raises:
            RateLimited: no token within ``max_wait``; nothing was taken.
        """
        return self._take(max_wait, claim=False)

    def claim(self) -> float:
        """Try again after sleeping: ``0.0`` with a token, else how long to sleep again."""
        return self._take(0.0, claim=True)

    def cancel(self) -> None:
        """Give up waiting (nothing to undo: nothing was taken or queued in Redis)."""
        self.fallback.cancel()

    async def areserve(self, max_wait: float = 0.0) -> float:
        """:meth:`reserve` with an asyncio client."""
        return await self._atake(max_wait, claim=False)

    async def aclaim(self) -> float:
        """:meth:`claim` with an asyncio client."""
        return await self._atake(0.0, claim=True)

    async def acancel(self) -> None:
        """:meth:`cancel` with an asyncio client."""
        self.fallback.cancel()

    def stats(self) -> SharedBucketStats:
        """A snapshot of the counters."""
        return SharedBucketStats(
            mode=self.mode,
            shared_takes=self.shared_takes,
            fallback_takes=self.fallback_takes,
            refused=self.refused,
            errors=self.errors,
        )

    def __repr__(self) -> str:
        return (
            f"RedisTokenBucket(name={self.name!r}, rate={self.rate:g}, burst={self.burst:g}, "
            f"mode={self.mode!r})"
        )


def _seconds(text: str) -> float:
    """A wait from the script's reply (at least 1 µs: a waiter must never spin), or ``-1.0``."""
    try:
        wait = float(text)
    except ValueError:
        return -1.0
    return max(wait, 1e-6) if 0.0 <= wait < float("inf") else -1.0
