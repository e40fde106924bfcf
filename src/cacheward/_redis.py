"""The Redis layer (L2): entries shared between processes, and cross-process leases.

One :class:`RedisLayer` talks to redis-py's synchronous client, its asyncio client, or either
``RedisCluster``. The decisions (which key, which bytes, whether a reply is an entry) live in
small shared helpers; the sync and async methods differ only in the one awaited call.

What the layer promises the driver (``cacheward._cached``), which wraps it in a circuit breaker:

- ``get`` returns an :class:`Entry` or ``None``. Bytes that are not a valid entry for the key
  (corrupt, truncated, tampered, foreign, another key's) are a miss plus a counted event; an
  exhausted connection pool is a miss too. Redis errors and timeouts *raise*, so the breaker
  sees them and skips the layer while it is sick.
- ``set`` never raises for a value the serializer refuses (a counted ``encode_errors``), and
  never replaces an entry created later than the one it writes.
- Leases: :meth:`RedisLayer.acquire_lease` / :meth:`RedisLayer.release_lease` /
  :meth:`RedisLayer.set_fenced` (and ``a``-prefixed coroutines) give one process per key the
  right to fetch, with a fencing token so a holder that lost its lease cannot overwrite what a
  later holder stored. All three scripts are safe to run twice.
- A stall guard (:class:`_Stall`): once Redis has been silent for ``stall_timeout`` while a
  command waits, new commands are not sent (reads miss, writes are skipped) until something
  answers or times out, so a hang holds only the callers already waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import select
import threading
import warnings
import weakref
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

from cacheward._checks import check_socket_timeout, check_url
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_positive_int, duration
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._serialize import (
    JsonSerializer,
    PayloadError,
    Serializer,
    decode_entry,
    encode_entry,
)

__all__ = ["RedisLayer"]

#: Counters reported by :meth:`RedisLayer.events`.
EVENTS: Final = (
    "hits",
    "misses",
    "expired",
    "errors",
    "timeouts",
    "pool_exhausted",
    "stalled",
    "encode_errors",
    "payload_truncated",
    "payload_corrupt",
    "payload_foreign",
    "payload_tampered",
    "payload_wrong_key",
    "payload_undecodable",
    "writes",
    "writes_refused",
    "leases_acquired",
    "leases_busy",
    "leases_declined",
    "leases_released",
    "leases_lost",
)

#: A client timeout above this many seconds draws a warning.
_SLOW_TIMEOUT: Final = 1.0
_INSTALL_HINT = "RedisLayer needs redis-py: pip install 'cacheward[redis]'"
_FIX_HINT = (
    "build the client with socket_timeout=0.1, socket_connect_timeout=0.1 and "
    "retry=Retry(NoBackoff(), 0) (from redis.retry and redis.backoff), or let cacheward build "
    "it: RedisLayer.from_url(url, timeout=0.1)"
)


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigurationError(_INSTALL_HINT) from None
    return redis


# --- scripts -------------------------------------------------------------------------------------


class _Script:
    """A Lua script shipped as package data, loaded once per server and run with EVALSHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (resources.files("cacheward") / "resources" / name).read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
        # NOSCRIPT means it did not run: loading it and running again is safe.
        client.script_load(self.source)
        return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
        await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


def _is_noscript(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")


_SCRIPTS: dict[str, _Script] = {}
_SCRIPTS_LOCK = threading.Lock()


def _script(name: str) -> _Script:
    script = _SCRIPTS.get(name)
    if script is None:
        with _SCRIPTS_LOCK:
            script = _SCRIPTS.get(name) or _Script(name)
            _SCRIPTS[name] = script
    return script


# --- errors --------------------------------------------------------------------------------------


def _pool_exhausted(exc: BaseException) -> bool:
    """redis-py's "no free connection" errors: the pool is full, Redis itself may be fine."""
    name = type(exc).__name__
    return name == "MaxConnectionsError" or (
        name == "ConnectionError" and str(exc) == "No connection available."
    )


def _replied(exc: BaseException) -> bool:
    """Whether a failed command still heard from Redis (an error reply, a refused connect)."""
    return not (_is_timeout(exc) or _pool_exhausted(exc) or isinstance(exc, asyncio.CancelledError))


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError"


# --- client inspection ---------------------------------------------------------------------------


def _kind(client: Any) -> tuple[bool, bool]:
    """``(is_async, is_cluster)`` for a redis-py client."""
    _redis()
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    if isinstance(client, AsyncRedisCluster):
        return True, True
    if isinstance(client, AsyncRedis):
        return True, False
    if isinstance(client, RedisCluster):
        return False, True
    if isinstance(client, Redis):
        return False, False
    raise ConfigurationTypeError(
        "client must be a redis-py client (redis.Redis, redis.asyncio.Redis, "
        f"redis.cluster.RedisCluster or redis.asyncio.cluster.RedisCluster), got "
        f"{type(client).__name__}; or use RedisLayer.from_url(url)"
    )


def _check_client(client: Any) -> float:
    """Refuse a client that could hang a caller; warn about one that retries on its own.

    Returns the client's socket timeout.
    """
    kwargs = dict(client.get_connection_kwargs() or {})
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the Redis client has decode_responses=True, but cacheward stores binary entries; "
            "give RedisLayer a client built without decode_responses"
        )
    problems = []
    for name in ("socket_timeout", "socket_connect_timeout"):
        seconds = kwargs.get(name)
        if seconds is None:
            raise ConfigurationError(
                f"the Redis client has no {name}, so a hung or unreachable Redis would block "
                f"callers for as long as the operating system lets it (minutes); {_FIX_HINT}"
            )
        check_socket_timeout(f"the Redis client's {name}", seconds)
        if seconds > _SLOW_TIMEOUT:
            problems.append(f"its {name} is {seconds} s")
    retry = getattr(client, "retry", None)
    if retry is None and hasattr(client, "get_retry"):
        retry = client.get_retry()
    retries = retry.get_retries() if retry is not None else 0
    if retries > 0:
        problems.append(f"it retries failed commands {retries} time(s) on its own")
    if problems:
        warnings.warn(
            f"the Redis client given to RedisLayer can hold a caller for long when Redis hangs: "
            f"{' and '.join(problems)} (cacheward's breaker already handles failures); "
            f"{_FIX_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(kwargs["socket_timeout"])


def _check_name(name: str, value: object, *, empty: bool) -> str:
    if not isinstance(value, str):
        raise ConfigurationTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty:
        raise ConfigurationError(f"{name} must not be empty")
    if any(c in value for c in "{}*?[]\\ \r\n"):
        raise ConfigurationError(
            f"{name} must not contain braces, glob characters, backslashes or whitespace "
            f"(braces would break the Redis Cluster hash tag), got {value!r}"
        )
    return value


class _Counters:
    __slots__ = ("_lock", "counts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(EVENTS, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class _Stall:
    """Notices a stalled Redis before the first timeout expires.

    If a command has been outstanding for ``after`` seconds and no reply of any kind has come
    back meanwhile, Redis (or the path to it) is stalled: new commands are refused at once
    instead of queueing behind it, so a hang costs only the callers already waiting, not every
    caller that arrives before the first timeout opens the driver's breaker. A healthy Redis
    answers in well under a millisecond, so ``after`` is never reached in normal operation.

    Lock-free on purpose (it runs on every command): each step is one attribute read or write,
    atomic under the GIL. Races only move the moment a stall is noticed by a command or two.
    A command that ends (answered or timed out) clears the "waiting since" mark, so after a
    timeout the next command is let through as a probe.
    """

    __slots__ = ("_mono", "after", "probe", "replied", "waiting")

    def __init__(self, after: float, mono: Callable[[], float]) -> None:
        self.after = after
        self._mono = mono
        #: Tells a silent Redis from a busy client: ``True`` when no in-flight connection has
        #: bytes waiting to be read, ``False`` when one has (the replies came; this process
        #: just has not read them yet), ``None`` when it cannot tell.
        self.probe: Callable[[], bool | None] = lambda: None
        #: When the oldest command still counted as waiting was sent (``None``: none).
        self.waiting: float | None = None
        #: When Redis last answered anything.
        self.replied = -math.inf

    def begin(self, *, read: bool = True) -> bool:
        """``False`` when Redis looks stalled and the command should not be sent.

        A read is refused when Redis has been silent for ``after`` and the probe does not
        show replies waiting; a write or lease command only after twice that silence and
        when the probe confirms it (skipping one has a cost: see ``RedisLayer._guarded``).
        """
        now = self._mono()
        waiting = self.waiting
        if waiting is None:
            self.waiting = now
            return True
        # Writes and lease commands wait for twice the silence before they are refused.
        after = self.after if read else 2 * self.after
        if now - waiting <= after or now - self.replied <= after:
            return True
        if now - waiting > max(1.0, 10 * after):
            # Nobody has ended a command for far longer than any timeout: let one through
            # as a probe rather than trust a mark that may have been left behind.
            self.waiting = now
            return True
        silent = self.probe()
        if silent is False:
            return True
        if silent is True:
            return False
        return not read

    def end(self, *, replied: bool) -> None:
        """The command is over; ``replied`` unless it timed out."""
        if replied:
            self.replied = self._mono()
        self.waiting = None


class _Stalled(TimeoutError):
    """Raised instead of sending a command to a Redis that has gone silent."""


class RedisLayer:
    """A shared cache layer in Redis (L2), with cross-process leases.

    Give it a redis-py client, or let :meth:`from_url` build one with safe settings. Put it
    after a :class:`~cacheward.MemoryLayer`::

        layer = cw.RedisLayer.from_url("redis://127.0.0.1:6379/0", namespace="billing")

        @cw.cached(ttl=60, stale_ttl=600, layers=[cw.MemoryLayer(maxsize=10_000), layer])
        def load_config(customer_id: str) -> dict: ...

    Keys look like ``<prefix>:<namespace>:v<version>:{<key text>}``; the key's lease and fencing
    counter append ``:lease`` / ``:fence`` after the braces, so all three share one Redis
    Cluster hash slot. Redis expires an entry at its ``error_until`` (the last moment it may be
    served at all).

    Args:
        client: a ``redis.Redis``, ``redis.asyncio.Redis``, ``redis.cluster.RedisCluster`` or
            ``redis.asyncio.cluster.RedisCluster`` built with ``socket_timeout`` and
            ``socket_connect_timeout`` (refused otherwise) and, preferably, no retries
            (``retry=Retry(NoBackoff(), 0)``; a warning otherwise) and not
            ``decode_responses``. A synchronous client serves ``def`` functions, an asyncio
            client ``async def`` ones; :meth:`from_url` serves both.
        prefix: the first part of every key.
        namespace: a second part, e.g. the service's name (optional).
        version: part of every key; bump it when the cached values' shape changes, and old
            entries are simply never read again (they expire on their own).
        serializer: how values become bytes; defaults to :class:`JsonSerializer`. Use the same
            one in every process sharing the keys.
        clock: the wall clock used to compute Redis TTLs.
        name: the layer's name in stats and errors.
        fence_ttl: how long a key's fencing counter lives after its last lease.
        stall_timeout: when a command has been waiting this long with no reply of any kind
            from Redis meanwhile, new reads are not sent: they are misses at once
            (``stalled`` events), so a hung Redis holds only the callers already waiting, for
            at most the client's timeout. Writes and lease commands are held back only after
            twice this silence and when no in-flight connection has a reply waiting to be
            read. Defaults to a quarter of the client's ``socket_timeout``; ``0`` switches it
            off.

    Raises:
        ConfigurationError: an argument is invalid, redis-py is missing, or the client could
            hang (no socket timeout) or returns ``str`` (``decode_responses=True``).
    """

    __slots__ = (
        "__weakref__",
        "_aclients",
        "_async_client",
        "_base",
        "_clock",
        "_counters",
        "_factory",
        "_fence_ms",
        "_owner",
        "_stall",
        "_sync_client",
        "_sync_lock",
        "cluster",
        "local",
        "name",
        "namespace",
        "prefix",
        "serializer",
        "version",
    )

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "cacheward",
        namespace: str = "",
        version: int = 1,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        name: str = "redis",
        fence_ttl: Duration = 3600.0,
        stall_timeout: Duration | None = None,
    ) -> None:
        self.prefix = _check_name("prefix", prefix, empty=False)
        self.namespace = _check_name("namespace", namespace, empty=True)
        self.version = check_positive_int("version", version, minimum=0)
        if serializer is None:
            serializer = JsonSerializer()
        elif not isinstance(serializer, Serializer):
            raise ConfigurationTypeError(
                "serializer must provide codec, signing_key, dumps() and loads() "
                f"(see cacheward.Serializer), got {type(serializer).__name__}"
            )
        self.serializer = serializer
        self._clock = check_clock(clock)
        self.name = name
        self.local = False
        self._fence_ms = max(1, math.ceil(duration("fence_ttl", fence_ttl, allow_zero=False) * 1e3))
        parts = [self.prefix, self.namespace] if self.namespace else [self.prefix]
        self._base = ":".join([*parts, f"v{self.version}", ""])
        self._owner = secrets.token_hex(8)
        self._counters = _Counters()
        self._sync_client: Any = None
        self._async_client: Any = None
        self._factory: _Factory | None = None
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_lock = threading.Lock()
        self.cluster = False
        self._stall = _Stall(math.inf, self._clock.monotonic)
        self._stall.probe = self._silent
        socket_timeout: float | None = None
        if client is not None:
            is_async, self.cluster = _kind(client)
            socket_timeout = _check_client(client)
            if is_async:
                self._async_client = client
            else:
                self._sync_client = client
        self._set_stall(stall_timeout, socket_timeout)

    def _set_stall(self, stall_timeout: Duration | None, socket_timeout: float | None) -> None:
        if stall_timeout is not None:
            after = duration("stall_timeout", stall_timeout)
        elif socket_timeout is not None:
            after = socket_timeout / 4
        else:
            after = 0.0
        # 0 switches the guard off (a client without a known timeout, or stall_timeout=0).
        self._stall.after = after if after > 0 else math.inf

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: Duration = 0.1,
        connect_timeout: Duration | None = None,
        max_connections: int = 64,
        cluster: bool = False,
        prefix: str = "cacheward",
        namespace: str = "",
        version: int = 1,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        name: str = "redis",
        fence_ttl: Duration = 3600.0,
        stall_timeout: Duration | None = None,
    ) -> RedisLayer:
        """Build a layer whose clients cacheward creates, with safe settings.

        The synchronous client is made on first use from a ``def`` function, and one asyncio
        client per event loop on first use from an ``async def`` function, so one layer serves
        both. Every client has a per-operation and connect timeout, no client-side retries and
        a bounded connection pool; when every pooled connection is busy, an operation is a miss
        at once (counted as ``pool_exhausted``) rather than a wait.

        Args:
            url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket).
            timeout: the per-operation socket timeout; a hung Redis costs a caller at most this
                long, and the driver's breaker then skips the layer for a while.
            connect_timeout: the connect timeout (defaults to ``timeout``).
            max_connections: the connection pool's size (per node for a cluster).
            cluster: connect to a Redis Cluster (``url`` names any one node).
            prefix: see :class:`RedisLayer`.
            namespace: see :class:`RedisLayer`.
            version: see :class:`RedisLayer`.
            serializer: see :class:`RedisLayer`.
            clock: see :class:`RedisLayer`.
            name: see :class:`RedisLayer`.
            fence_ttl: see :class:`RedisLayer`.
            stall_timeout: see :class:`RedisLayer` (default: ``timeout / 4``).

        Raises:
            ConfigurationError: an argument is invalid or redis-py is missing.
        """
        _redis()
        factory = _Factory(
            check_url(url),
            timeout=check_socket_timeout("timeout", timeout),
            connect_timeout=check_socket_timeout(
                "connect_timeout", timeout if connect_timeout is None else connect_timeout
            ),
            max_connections=check_positive_int("max_connections", max_connections),
            cluster=bool(cluster),
        )
        layer = cls(
            None,
            prefix=prefix,
            namespace=namespace,
            version=version,
            serializer=serializer,
            clock=clock,
            name=name,
            fence_ttl=fence_ttl,
        )
        layer._factory = factory
        layer.cluster = factory.cluster
        layer._set_stall(stall_timeout, factory.timeout)
        return layer

    def check_caller(self, *, asynchronous: bool, where: str) -> None:
        """Refuse, at decoration, a function this layer's client cannot serve.

        Raises:
            ConfigurationError: an asyncio client for a ``def`` function or a sync client for
                an ``async def`` one (:meth:`from_url` layers serve both).
        """
        client = self._async_client if asynchronous else self._sync_client
        if self._factory is None and client is None:
            have, fn = ("a synchronous", "an async def") if asynchronous else ("an asyncio", "a")
            raise ConfigurationError(
                f"{where}: layer {self.name!r} has {have} Redis client and cannot serve {fn} "
                "function (every operation would be a miss); give it the other kind of client, "
                "or use RedisLayer.from_url, which serves both"
            )

    # --- clients ---

    def _sync(self) -> Any:
        client = self._sync_client
        if client is not None:
            return client
        if self._factory is None:
            raise ConfigurationError(
                f"layer {self.name!r} was given an asyncio Redis client and cannot serve a "
                "plain def function; give it a redis.Redis client, or use RedisLayer.from_url"
            )
        with self._sync_lock:
            if self._sync_client is None:
                self._sync_client = self._factory.sync_client()
            return self._sync_client

    def _async(self) -> Any:
        client = self._async_client
        if client is not None:
            return client
        factory = self._factory
        if factory is None:
            raise ConfigurationError(
                f"layer {self.name!r} was given a synchronous Redis client and cannot serve an "
                "async def function; give it a redis.asyncio.Redis client, or use "
                "RedisLayer.from_url"
            )
        # asyncio connections belong to the loop that made them: one client per loop.
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = factory.async_client()
        return client

    def close(self) -> None:
        """Close the synchronous client if this layer created it (:meth:`from_url`)."""
        if self._factory is not None and self._sync_client is not None:
            client, self._sync_client = self._sync_client, None
            if self.cluster:
                # RedisCluster.close() leaves its nodes' pooled sockets to the garbage
                # collector; close them here.
                for node in client.get_nodes():
                    if node.redis_connection is not None:
                        node.redis_connection.connection_pool.disconnect()
            client.close()

    async def aclose(self) -> None:
        """Close this event loop's asyncio client if this layer created it."""
        if self._factory is None:
            return
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _silent(self) -> bool | None:
        """Whether every in-flight connection has nothing to read (see ``_Stall.probe``).

        Looks at redis-py's pools (private attributes, so any surprise means "cannot tell").
        """
        try:
            pools = []
            if self._sync_client is not None and not self.cluster:
                pools.append(self._sync_client.connection_pool)
            asyncs = [self._async_client, *self._aclients.values()]
            pools += [c.connection_pool for c in asyncs if c is not None and not self.cluster]
            socks = []
            for pool in pools:
                for conn in list(pool._in_use_connections):
                    sock = getattr(conn, "_sock", None)
                    if sock is None:
                        writer = getattr(conn, "_writer", None)
                        sock = None if writer is None else writer.get_extra_info("socket")
                    if sock is not None:
                        socks.append(sock)
            if not socks:
                return None
            readable, _, _ = select.select(socks, [], [], 0)
        except Exception:  # a probe that cannot look says "cannot tell"
            return None
        return not readable

    # --- keys and bytes (shared by both colours) ---

    def redis_key(self, key: CacheKey) -> str:
        """The Redis key holding ``key``'s entry."""
        return f"{self._base}{{{key.text}}}"

    def _lease_value(self, token: int) -> str:
        return f"{token}:{self._owner}"

    def _ttl_ms(self, entry: Entry) -> int:
        return math.ceil((entry.error_until - self._clock.time()) * 1000.0)

    def _decode(self, data: bytes | None, key: CacheKey) -> Entry | None:
        counters = self._counters
        if data is None:
            counters.add("misses")
            return None
        try:
            entry = decode_entry(data, key.text, self.serializer)
        except PayloadError as exc:
            counters.add(f"payload_{exc.reason}")
            return None
        if entry.error_until <= self._clock.time():
            counters.add("expired")
            return None
        counters.add("hits")
        return entry

    def _put_args(
        self, key: CacheKey, entry: Entry, token: int
    ) -> tuple[tuple[str, str], tuple[Any, ...]] | None:
        """The put script's keys and arguments, or ``None`` when there is nothing to store."""
        ttl_ms = self._ttl_ms(entry)
        if ttl_ms <= 0:
            return None
        try:
            payload = encode_entry(entry, key.text, self.serializer, token=token)
        except Exception:
            self._counters.add("encode_errors")
            return None
        value_key = self.redis_key(key)
        return (value_key, value_key + ":lease"), (
            payload,
            ttl_ms,
            token,
            repr(entry.created),
            self._lease_value(token),
        )

    def _put_result(self, result: Any) -> bool:
        stored = bool(result)
        self._counters.add("writes" if stored else "writes_refused")
        return stored

    def _failed(self, exc: BaseException) -> bool:
        """Count a failed operation; ``True`` when it is a miss rather than a Redis failure
        (an exhausted pool, or a command not sent because Redis has gone silent)."""
        if isinstance(exc, _Stalled):
            self._counters.add("stalled")
            return True
        if _pool_exhausted(exc):
            self._counters.add("pool_exhausted")
            return True
        self._counters.add("timeouts" if _is_timeout(exc) else "errors")
        return False

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (a write or a lease command) under the stall guard.

        Refused (``_Stalled``) only when the probe confirms that no reply is waiting on any
        in-flight connection: skipping a lease or a write can cost an extra backend fetch
        (a lease not taken, a value other processes wait for and never see), and a process
        starved of CPU (threads queued for the GIL) can look like a silent Redis for tens of
        milliseconds while the replies sit unread in its sockets.
        """
        stall = self._stall
        if not stall.begin(read=False):
            raise _Stalled(f"Redis sent nothing for {stall.after:.3f} s; command not sent")
        try:
            result = fn(*args)
        except BaseException as exc:
            stall.end(replied=_replied(exc))
            raise
        stall.end(replied=True)
        return result

    async def _aguarded(self, fn: Any, *args: Any) -> Any:
        """Async :meth:`_guarded`."""
        stall = self._stall
        if not stall.begin(read=False):
            raise _Stalled(f"Redis sent nothing for {stall.after:.3f} s; command not sent")
        try:
            result = await fn(*args)
        except BaseException as exc:
            stall.end(replied=_replied(exc))
            raise
        stall.end(replied=True)
        return result

    # --- the Layer protocol ---

    def get(self, key: CacheKey) -> Entry | None:
        """Return ``key``'s entry, or ``None`` (missing, invalid bytes, or no free connection).

        Raises:
            redis.RedisError: Redis failed or timed out (the driver's breaker counts it).
        """
        # The hot path: the stall guard inlined (see _guarded).
        stall = self._stall
        if not stall.begin():
            self._counters.add("stalled")
            return None
        try:
            data = self._sync().get(f"{self._base}{{{key.text}}}")
        except BaseException as exc:
            stall.end(replied=_replied(exc))
            if isinstance(exc, Exception) and self._failed(exc):
                return None
            raise
        stall.end(replied=True)
        return self._decode(data, key)

    def set(self, key: CacheKey, entry: Entry) -> None:
        """Store ``entry`` until its ``error_until``, unless Redis holds one created later."""
        self.set_fenced(key, entry, 0)

    def delete(self, key: CacheKey) -> None:
        """Remove ``key``'s entry."""
        self._sync().delete(self.redis_key(key))

    def clear(self) -> None:
        """Remove every key under this layer's prefix, namespace and version (SCAN + DEL)."""
        client = self._sync()
        batch: list[Any] = []
        for found in client.scan_iter(match=self._pattern(), count=500):
            batch.append(found)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)

    def _pattern(self) -> str:
        return self._base + "*"

    async def aget(self, key: CacheKey) -> Entry | None:
        """Async :meth:`get`."""
        stall = self._stall
        if not stall.begin():
            self._counters.add("stalled")
            return None
        try:
            data = await self._async().get(f"{self._base}{{{key.text}}}")
        except BaseException as exc:
            stall.end(replied=_replied(exc))
            if isinstance(exc, Exception) and self._failed(exc):
                return None
            raise
        stall.end(replied=True)
        return self._decode(data, key)

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        """Async :meth:`set`."""
        await self.aset_fenced(key, entry, 0)

    async def adelete(self, key: CacheKey) -> None:
        """Async :meth:`delete`."""
        await self._async().delete(self.redis_key(key))

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        client = self._async()
        batch: list[Any] = []
        async for found in client.scan_iter(match=self._pattern(), count=500):
            batch.append(found)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)

    # --- leases ---

    def acquire_lease(self, key: CacheKey, *, ttl: float) -> int | None:
        """Take ``key``'s lease for ``ttl`` seconds.

        Returns:
            The fencing token (> 0) if this process now holds the lease; ``None`` if another
            process does, or if a fresh entry was stored just before (read it with
            :meth:`get`: there is nothing to fetch).

        Raises:
            redis.RedisError: Redis failed, timed out or has no free connection; the driver
                then fetches without a lease, under its in-process protections.
        """
        try:
            result = self._guarded(
                _script("cache_lease_acquire.lua").run, self._sync(), *self._acquire_args(key, ttl)
            )
        except Exception as exc:
            self._failed(exc)
            raise
        token, arrived = self._lease_result(result, key)
        if arrived:
            self.release_lease(key, token)
            return None
        return token or None

    def release_lease(self, key: CacheKey, token: int) -> None:
        """Give ``key``'s lease back if this process still holds it under ``token``."""
        value_key = self.redis_key(key)
        result = self._guarded(
            _script("cache_lease_release.lua").run,
            self._sync(),
            (value_key + ":lease",),
            (self._lease_value(token),),
        )
        self._counters.add("leases_released" if result else "leases_lost")

    def set_fenced(self, key: CacheKey, entry: Entry, token: int) -> bool:
        """Store ``entry`` fetched under lease ``token``; never replace a newer entry.

        The write goes through if the lease is still held under ``token``; otherwise only if
        Redis holds no entry, or one created before ``entry`` and written under an older token
        (a holder whose lease expired, was evicted or was taken over cannot overwrite what a
        later holder stored). ``token`` 0 is an unfenced write, decided by ``created`` alone.

        Returns:
            Whether the entry was stored.
        """
        prepared = self._put_args(key, entry, token)
        if prepared is None:
            return False
        try:
            result = self._guarded(_script("cache_put.lua").run, self._sync(), *prepared)
        except Exception as exc:
            if self._failed(exc):
                return False
            raise
        return self._put_result(result)

    async def aacquire_lease(self, key: CacheKey, *, ttl: float) -> int | None:
        """Async :meth:`acquire_lease`."""
        try:
            result = await self._aguarded(
                _script("cache_lease_acquire.lua").arun,
                self._async(),
                *self._acquire_args(key, ttl),
            )
        except Exception as exc:
            self._failed(exc)
            raise
        token, arrived = self._lease_result(result, key)
        if arrived:
            await self.arelease_lease(key, token)
            return None
        return token or None

    async def arelease_lease(self, key: CacheKey, token: int) -> None:
        """Async :meth:`release_lease`."""
        value_key = self.redis_key(key)
        result = await self._aguarded(
            _script("cache_lease_release.lua").arun,
            self._async(),
            (value_key + ":lease",),
            (self._lease_value(token),),
        )
        self._counters.add("leases_released" if result else "leases_lost")

    async def aset_fenced(self, key: CacheKey, entry: Entry, token: int) -> bool:
        """Async :meth:`set_fenced`."""
        prepared = self._put_args(key, entry, token)
        if prepared is None:
            return False
        try:
            result = await self._aguarded(_script("cache_put.lua").arun, self._async(), *prepared)
        except Exception as exc:
            if self._failed(exc):
                return False
            raise
        return self._put_result(result)

    def _acquire_args(
        self, key: CacheKey, ttl: float
    ) -> tuple[tuple[str, str, str], tuple[Any, ...]]:
        value_key = self.redis_key(key)
        return (value_key + ":lease", value_key + ":fence", value_key), (
            max(1, math.ceil(ttl * 1000.0)),
            self._owner,
            self._fence_ms,
        )

    def _lease_result(self, result: Any, key: CacheKey) -> tuple[int, bool]:
        """``(token, arrived)``: token 0 when busy; ``arrived`` when the lease was taken but a
        fresh entry is already stored (a holder finished just before), so it must be given
        back rather than used to fetch again."""
        token = int(result[0])
        if token <= 0:
            self._counters.add("leases_busy")
            return 0, False
        data = result[1]
        if data is not None:
            try:
                found = decode_entry(data, key.text, self.serializer)
            except PayloadError:
                found = None  # counted when get() reads it
            if found is not None and self._clock.time() < found.fresh_until:
                self._counters.add("leases_declined")
                return token, True
        self._counters.add("leases_acquired")
        return token, False

    # --- introspection ---

    def events(self) -> dict[str, int]:
        """Counters since the layer was made: hits, misses, errors, timeouts, pool exhaustion,
        refused payloads by reason (``payload_tampered``, ...), writes, leases."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        source = self._factory.url if self._factory is not None else "client"
        return (
            f"RedisLayer({source!r}, prefix={self.prefix!r}, namespace={self.namespace!r}, "
            f"version={self.version}, serializer={self.serializer!r})"
        )


class _Factory:
    """Builds redis-py clients with cacheward's safe settings."""

    __slots__ = ("cluster", "connect_timeout", "max_connections", "timeout", "url")

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        cluster: bool,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.cluster = cluster

    def _common(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }

    def sync_client(self) -> Any:
        import redis
        import redis.cluster

        # A plain pool with a bound: when it is full, redis-py raises MaxConnectionsError at
        # once, which the layer turns into a miss (a blocking pool would add a wait and, on
        # asyncio, a Condition round trip to every command).
        options = self._common()
        options["max_connections"] = self.max_connections
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(self.url, **options)
        return redis.Redis.from_pool(redis.ConnectionPool.from_url(self.url, **options))

    def async_client(self) -> Any:
        import redis.asyncio
        import redis.asyncio.cluster

        options = self._common()
        options["max_connections"] = self.max_connections
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(self.url, **options)
        return redis.asyncio.Redis.from_pool(
            redis.asyncio.ConnectionPool.from_url(self.url, **options)
        )
