"""The Redis layer (L2): entries shared between processes, and cross-process leases.

One :class:`RedisLayer` talks to redis-py's synchronous client, its asyncio client, or either
``RedisCluster``. Every operation is written once, as a plan (see ``cacheward._plan``) of
Redis commands (:class:`_Command`, run under the stall guard); the sync and async methods are
one line each, running the same plan with ``perform`` or ``aperform``.

What the layer promises the driver (``cacheward._cached``), which wraps it in a circuit breaker:

- ``get`` returns an :class:`Entry` or ``None``. Bytes that are not a valid entry for the key
  (corrupt, truncated, tampered, foreign, another key's) are a miss plus a counted event; an
  exhausted connection pool is a miss too. Redis errors and timeouts *raise*, so the breaker
  sees them and skips the layer while it is sick.
- ``set`` never raises for a value the serializer refuses (a counted ``encode_errors``), and
  never replaces an entry created later than the one it writes.
- Leases (:class:`cacheward.layers.LeasingLayer`): :meth:`RedisLayer.lease` takes a key's
  lease and reads its entry in one round trip; :meth:`RedisLayer.publish` stores the fetched
  value and releases the lease in one (saying "no value is coming" when there is nothing to
  store); :meth:`RedisLayer.release_lease` gives it back after a failed fetch. A fencing token
  keeps a holder that lost its lease from overwriting what a later holder stored. Every
  script is safe to run twice.
- A stall guard (:class:`_Stall`): once Redis has been silent for ``stall_timeout`` while a
  command waits, new commands are not sent (reads miss, writes are skipped) until something
  answers or times out, so a hang holds only the callers already waiting.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import select
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from cacheward import _forksafe
from cacheward._background import adrain, drain
from cacheward._checks import check_socket_timeout, check_url
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_positive_int, duration
from cacheward._core.entry import MAX_CLOCK_SKEW, Entry
from cacheward._core.keys import CacheKey
from cacheward._core.tags import clear_mark, fenced, stamp_of, tag_mark
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._events import EventKind, emit
from cacheward._layers import LayerBreaker, LeaseReply, Probed
from cacheward._plan import Op, Plan, aperform, perform
from cacheward._redisclient import (
    deadline,
    deadline_class,
    no_retry,
    private_client,
    with_deadlines,
)
from cacheward._rediskit import (
    Fault,
    check_name,
    classify,
    client_kind,
    is_noscript,
    is_timeout,
    redis_module,
    replied,
    script,
    sick,
)
from cacheward._serialize import (
    DEFAULT_COMPRESS_ABOVE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    Envelope,
    PayloadError,
    Serializer,
    UnstorableValue,
    default_serializer,
    entry_stamps,
)

if TYPE_CHECKING:
    import asyncio

__all__ = ["RedisLayer", "RedisLayerStats"]

#: Counters reported by :meth:`RedisLayer.stats`.
EVENTS: Final = (
    "hits",
    "misses",
    "expired",
    "errors",
    "timeouts",
    "pool_exhausted",
    "key_errors",
    "stalled",
    "encode_errors",
    "payload_truncated",
    "payload_corrupt",
    "payload_foreign",
    "payload_tampered",
    "payload_wrong_key",
    "payload_undecodable",
    "payload_too_large",
    "writes_too_large",
    "writes",
    "writes_refused",
    "leases_acquired",
    "leases_busy",
    "leases_declined",
    "leases_released",
    "leases_lost",
    "fences",
    "writes_fenced",
    "tag_fences",
    "tag_misses",
)

#: How long a tag's mark lives by default (see ``RedisLayer(tag_ttl=)``): 7 days.
TAG_TTL: Final = 7 * 86400.0

#: A client timeout above this many seconds draws a warning.
_SLOW_TIMEOUT: Final = 1.0
_FIX_HINT = (
    "build the client with socket_timeout=0.1 and socket_connect_timeout=0.1, or let cacheward "
    "build it: RedisLayer.from_url(url, socket_timeout=0.1)"
)


# --- client inspection ---------------------------------------------------------------------------


def _check_client(client: Any) -> float:
    """Refuse a client that could hang a caller; warn about one with long timeouts.

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
    # Its retry policy and health checks are not a problem: the layer talks through a private
    # client without them (see cacheward._redisclient.private_client).
    if problems:
        warnings.warn(
            f"the Redis client given to RedisLayer can hold a caller for long when Redis hangs: "
            f"{' and '.join(problems)} (cacheward's breaker already handles failures); "
            f"{_FIX_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(kwargs["socket_timeout"])


class _Counters:
    __slots__ = ("_lock", "counts")

    def __init__(self) -> None:
        self._lock = _forksafe.lock()
        self.counts = dict.fromkeys(EVENTS, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


@dataclasses.dataclass(frozen=True)
class RedisLayerStats:
    """A snapshot of a :class:`RedisLayer`'s counters (see :meth:`RedisLayer.stats`)."""

    hits: int = 0
    """Reads that returned an entry."""
    misses: int = 0
    """Reads that found nothing."""
    expired: int = 0
    """Reads that found an entry past its limit."""
    errors: int = 0
    """Commands that failed (not timeouts)."""
    timeouts: int = 0
    """Commands that timed out."""
    pool_exhausted: int = 0
    """Commands not sent: every pooled connection was busy (a miss)."""
    key_errors: int = 0
    """Errors about one key (``WRONGTYPE``): a miss for that key, not a sick layer."""
    stalled: int = 0
    """Commands not sent: Redis had gone silent (a miss)."""
    encode_errors: int = 0
    """Values the serializer refused (not stored)."""
    payload_truncated: int = 0
    """Payloads refused as truncated (a miss)."""
    payload_corrupt: int = 0
    """Payloads refused as corrupt (a miss)."""
    payload_foreign: int = 0
    """Payloads refused as foreign (a miss)."""
    payload_tampered: int = 0
    """Payloads refused as tampered (a miss)."""
    payload_wrong_key: int = 0
    """Payloads refused as wrong_key (a miss)."""
    payload_undecodable: int = 0
    """Payloads refused as undecodable (a miss)."""
    payload_too_large: int = 0
    """Payloads refused as over ``max_payload_bytes`` (a miss)."""
    writes_too_large: int = 0
    """Values not written: over ``max_payload_bytes``."""
    writes: int = 0
    """Entries stored."""
    writes_refused: int = 0
    """Writes refused: a newer entry was there."""
    leases_acquired: int = 0
    """Leases taken."""
    leases_busy: int = 0
    """Lease requests that found another holder."""
    leases_declined: int = 0
    """Lease requests that took none: a fresh value was stored, or none is coming."""
    leases_released: int = 0
    """Leases given back (published or released)."""
    leases_lost: int = 0
    """Leases gone before their release (expired or taken over)."""
    fences: int = 0
    """Invalidations (or writes over a key) that fenced the key's earlier leases."""
    writes_fenced: int = 0
    """Lease holders' writes refused: the key was invalidated after their lease was taken."""
    tag_fences: int = 0
    """Tag invalidations (and ``cache_clear`` calls) written: one script, O(1) per tag."""
    tag_misses: int = 0
    """Plain reads (``get``) of an entry a tag invalidation or ``cache_clear`` had fenced (a
    miss). A lease request drops such an entry inside its script and counts nothing here."""


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
        when the probe confirms it (skipping one has a cost: see ``RedisLayer._begin``).
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


class _Command(Op):
    """One Redis command, under the layer's stall guard (reads are held back sooner than
    writes and lease commands: see :meth:`_Stall.begin`)."""

    __slots__ = ("args", "layer", "name", "read")

    def __init__(
        self, layer: RedisLayer, name: str, args: tuple[Any, ...], *, read: bool = False
    ) -> None:
        self.layer = layer
        self.name = name
        self.args = args
        self.read = read

    def sync(self) -> Any:
        stall = self.layer._begin(self.read)
        try:
            # The whole command within the layer's timeout, however the bytes trickle in.
            with deadline(self.layer._timeout):
                result = getattr(self.layer._sync(), self.name)(*self.args)
        except BaseException as exc:
            stall.end(replied=replied(exc))
            raise
        stall.end(replied=True)
        return result

    async def aio(self) -> Any:
        stall = self.layer._begin(self.read)
        try:
            result = await getattr(self.layer._async(), self.name)(*self.args)
        except BaseException as exc:
            stall.end(replied=replied(exc))
            raise
        stall.end(replied=True)
        return result


def _close_sync(client: Any, *, cluster: bool, made: bool) -> None:
    """Close a sync client the layer made (``made``), or only the connections of the private
    one made from a user's (kept: a later command reconnects)."""
    if cluster:
        # RedisCluster.close() leaves its nodes' pooled sockets to the garbage collector.
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    if made:
        client.close()
    elif not cluster:
        client.connection_pool.disconnect()


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
        serializer: how values become bytes; defaults to :class:`MsgpackSerializer` (exact
            Python types). Use the same one in every process sharing the keys.
        clock: the wall clock used to compute Redis TTLs.
        name: the layer's name in stats and errors.
        fence_ttl: how long a key's fencing counter lives after its last lease.
        tag_ttl: how long a tag's mark lives after its last invalidation (and a function's
            after its last ``cache_clear``); entries are never kept longer than this, so no
            entry can outlive a mark that fenced it (default 7 days).
        stall_timeout: when a command has been waiting this long with no reply of any kind
            from Redis meanwhile, new reads are not sent: they are misses at once
            (``stalled`` events), so a hung Redis holds only the callers already waiting, for
            at most the client's timeout. Writes and lease commands are held back only after
            twice this silence and when no in-flight connection has a reply waiting to be
            read. Defaults to a quarter of the client's ``socket_timeout``; ``0`` switches it
            off.
        breaker_failures: consecutive failures that open the layer's circuit breaker (one
            breaker per layer, shared by every function using it); defaults to what the first
            :func:`~cacheward.cached` function using the layer asks for, else 3.
        breaker_reset: seconds the open breaker waits before letting a probe through
            (defaults likewise, else 5).
        max_payload_bytes: the largest serialized value written (default 8 MiB); a larger
            one is served to its callers and kept in memory, not written (``writes_too_large``;
            the cached function counts it in ``stats().unstorable`` and logs it once). Reads
            refuse bodies over it too, compressed ones before inflating (``payload_too_large``).
            ``None``: no cap.
        compression: ``None`` (default), ``"zlib"``, ``"zstd"`` (``pip install
            'cacheward[zstd]'``) or ``"auto"`` (zstd if installed, else zlib): compress bodies
            of at least ``compress_above`` bytes. Readers inflate whatever an entry says it
            used, so processes may differ here, except that reading zstd needs zstandard.
        compress_above: the smallest body compressed, in bytes (default 64 KiB).

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
        "_deferred",
        "_envelope",
        "_factory",
        "_fence_ms",
        "_given",
        "_owner",
        "_stall",
        "_subscriber",
        "_sync_client",
        "_sync_lock",
        "_tag_ms",
        "_timeout",
        "breaker",
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
        breaker_failures: int | None = None,
        breaker_reset: Duration | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        compression: str | None = None,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
        tag_ttl: Duration = TAG_TTL,
    ) -> None:
        self.prefix = check_name("prefix", prefix, empty=False, part=True)
        self.namespace = check_name("namespace", namespace, empty=True, part=True)
        self.version = check_positive_int("version", version, minimum=0)
        if serializer is None:
            serializer = default_serializer()
        elif not isinstance(serializer, Serializer):
            raise ConfigurationTypeError(
                "serializer must provide codec, signing_key, dumps() and loads() "
                f"(see cacheward.Serializer), got {type(serializer).__name__}"
            )
        self.serializer = serializer
        self._envelope = Envelope(
            serializer,
            max_payload_bytes=max_payload_bytes,
            compression=compression,
            compress_above=compress_above,
        )
        self._clock = check_clock(clock)
        self.name = name
        self.local = False
        #: The layer's circuit breaker, shared by every function using the layer: configured
        #: here, or (both settings left out) by the first cached function that uses it.
        self.breaker: LayerBreaker | None = None
        if breaker_failures is not None or breaker_reset is not None:
            self.breaker = LayerBreaker(
                failures=3 if breaker_failures is None else breaker_failures,
                reset=5.0 if breaker_reset is None else breaker_reset,
                origin=f"RedisLayer(name={name!r})",
            )
        self._fence_ms = max(1, math.ceil(duration("fence_ttl", fence_ttl, allow_zero=False) * 1e3))
        self._tag_ms = max(1, math.ceil(duration("tag_ttl", tag_ttl, allow_zero=False) * 1e3))
        parts = [self.prefix, self.namespace] if self.namespace else [self.prefix]
        self._base = ":".join([*parts, f"v{self.version}", ""])
        self._owner = secrets.token_hex(8)
        _forksafe.register(self)
        self._counters = _Counters()
        self._sync_client: Any = None
        #: A user's cluster client whose private copy could not be made yet (see _sync).
        self._deferred: Callable[[], Any] | None = None
        self._async_client: Any = None
        #: The asyncio client the user gave: each event loop gets a private client made from
        #: its settings (see :meth:`_async`).
        self._given: Any = None
        self._factory: Any = None  # a Factory or a cacheward._sentinel.SentinelFactory
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_lock = _forksafe.lock()
        self._subscriber: Any = None
        self.cluster = False
        self._stall = _Stall(math.inf, self._clock.monotonic)
        self._stall.probe = self._silent
        socket_timeout: float | None = None
        #: How long one command may take in all (connecting aside): the client's timeout.
        self._timeout = math.inf
        if client is not None:
            is_async, self.cluster = client_kind(client)
            socket_timeout = self._timeout = _check_client(client)
            # Never the user's object: ours, with its settings, without retries.
            if is_async:
                self._given = client
                self._async_client = private_client(client, is_async=True, cluster=self.cluster)
            else:
                from redis.exceptions import RedisClusterException, RedisError

                given, cluster = client, self.cluster
                try:
                    self._sync_client = private_client(given, is_async=False, cluster=cluster)
                except (RedisError, RedisClusterException, OSError):
                    # A cluster client connects at once to learn its nodes. While it cannot,
                    # the layer makes its client at first use (each operation until then is
                    # a layer error, a miss), never raising from the constructor.
                    self._deferred = lambda: private_client(given, is_async=False, cluster=cluster)
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
        socket_timeout: Duration = 0.1,
        socket_connect_timeout: Duration | None = None,
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
        breaker_failures: int | None = None,
        breaker_reset: Duration | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        compression: str | None = None,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
        tag_ttl: Duration = TAG_TTL,
        timeout: Duration | None = None,
        connect_timeout: Duration | None = None,
    ) -> RedisLayer:
        """Build a layer whose clients cacheward creates, with safe settings.

        The synchronous client is made on first use from a ``def`` function, and one asyncio
        client per event loop on first use from an ``async def`` function, so one layer serves
        both. Every client has a per-operation and connect timeout, no client-side retries and
        a bounded connection pool; when every pooled connection is busy, an operation is a miss
        at once (counted as ``pool_exhausted``) rather than a wait.

        Args:
            url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket), or
                ``redis+sentinel://host:port,host:port/service/db`` to follow the master of a
                Sentinel-monitored service through failovers (see ``docs/redis.md``).
            socket_timeout: the per-operation socket timeout; a hung Redis costs a caller at
                most this long, and the driver's breaker then skips the layer for a while.
            socket_connect_timeout: the connect timeout (defaults to ``socket_timeout``).
            max_connections: the connection pool's size (per node for a cluster).
            cluster: connect to a Redis Cluster (``url`` names any one node).
            prefix: see :class:`RedisLayer`.
            namespace: see :class:`RedisLayer`.
            version: see :class:`RedisLayer`.
            serializer: see :class:`RedisLayer`.
            clock: see :class:`RedisLayer`.
            name: see :class:`RedisLayer`.
            fence_ttl: see :class:`RedisLayer`.
            stall_timeout: see :class:`RedisLayer` (default: ``socket_timeout / 4``).
            breaker_failures: see :class:`RedisLayer`.
            breaker_reset: see :class:`RedisLayer`.
            max_payload_bytes: see :class:`RedisLayer`.
            compression: see :class:`RedisLayer`.
            compress_above: see :class:`RedisLayer`.
            tag_ttl: see :class:`RedisLayer`.
            timeout: the old spelling of ``socket_timeout`` (deprecated; accepted until 0.2).
            connect_timeout: the old spelling of ``socket_connect_timeout`` (likewise).

        Raises:
            ConfigurationError: an argument is invalid or redis-py is missing.
        """
        redis_module()
        if timeout is not None:
            socket_timeout = timeout
        if connect_timeout is not None:
            socket_connect_timeout = connect_timeout
        from cacheward._sentinel import factory_for, is_sentinel_url

        # A redis+sentinel:// URL lists several hosts: its own factory parses and checks it.
        given: object = url  # checked, whatever a caller without a type checker passed
        if not (isinstance(given, str) and is_sentinel_url(given)):
            check_url(given)
        factory = factory_for(
            url,
            timeout=check_socket_timeout("socket_timeout", socket_timeout),
            connect_timeout=check_socket_timeout(
                "socket_connect_timeout",
                socket_timeout if socket_connect_timeout is None else socket_connect_timeout,
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
            breaker_failures=breaker_failures,
            breaker_reset=breaker_reset,
            max_payload_bytes=max_payload_bytes,
            compression=compression,
            compress_above=compress_above,
            tag_ttl=tag_ttl,
        )
        layer._factory = factory
        layer._timeout = factory.timeout
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
        factory, deferred = self._factory, self._deferred
        if factory is None and deferred is None:
            raise ConfigurationError(
                f"layer {self.name!r} was given an asyncio Redis client and cannot serve a "
                "plain def function; give it a redis.Redis client, or use RedisLayer.from_url"
            )
        with self._sync_lock:
            if self._sync_client is None:
                if factory is not None:
                    self._sync_client = with_deadlines(factory.sync_client())
                else:
                    self._sync_client = cast(Callable[[], Any], deferred)()
            return self._sync_client

    def _async(self) -> Any:
        if self._given is not None:
            return self._loop_client()
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
        import asyncio

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = factory.async_client()
        return client

    def _loop_client(self) -> Any:
        """This event loop's private client, made from the user's asyncio client: its
        connections belong to the loop that made them, so a client used by one loop after
        another (``asyncio.run`` twice) would fail on the second."""
        import asyncio

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = private_client(
                self._given, is_async=True, cluster=self.cluster
            )
        return client

    # --- the backplane (see cacheward._backplane) ---

    @property
    def channel(self) -> str:
        """The backplane channel: fences of keys of this layer are announced on it."""
        return f"{self._base}backplane"

    def subscriber(self) -> Any:
        """This layer's backplane subscriber in this process (made on first use), or ``None``
        when the layer has no synchronous connection to listen on (an asyncio client given
        directly: use :meth:`from_url`, or give a ``redis.Redis`` client)."""
        from cacheward._backplane import Subscriber

        with self._sync_lock:
            if self._subscriber is None:
                if self._factory is None and self._sync_client is None and self._deferred is None:
                    return None
                self._subscriber = Subscriber(self._pubsub, self.channel, self.name)
            return self._subscriber

    def _pubsub(self) -> Any:
        factory = self._factory
        if type(factory) is Factory and not factory.cluster:
            # Its own connection, with a timeout above the subscriber's silence limit: the
            # layer's (often 0.1 s) would turn a busy moment into a lost channel, and each
            # reconnect empties the memory layers above it.
            import redis

            from cacheward._backplane import SILENCE

            own: Any = redis.Redis.from_url(
                factory.url,
                socket_timeout=max(SILENCE, factory.timeout),
                socket_connect_timeout=max(1.0, factory.connect_timeout),
                health_check_interval=0,
            )
            return own.pubsub()
        client = self._sync_client
        if client is None:
            client = self._sync()
        return client.pubsub()

    def _stop_subscriber(self, *, wait: bool = True) -> None:
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.close(timeout=2.0 if wait else 0.0)

    def after_fork(self) -> None:
        """In a forked child: a lease owner id of its own (with its parent's, the child would
        take the parent's lease for its own and fetch the same key at the same time); no
        command of the parent's threads counted as outstanding by the stall guard; and no
        asyncio client of the parent's loops (their sockets are the parent's). redis-py's
        pools make new connections in a child by themselves."""
        self._owner = secrets.token_hex(8)
        self._stall.waiting = None
        self._aclients.clear()

    def close(self) -> None:
        """Close the synchronous client if this layer created it (:meth:`from_url`), or the
        connections of the private client made from the one given (which stays usable), and
        stop the layer's backplane subscriber.

        Waits first (at most twice the socket timeout) for the writes that cached
        functions started in the background after answering their callers: a lease holder's
        value, which other processes may be waiting for.
        """
        self._stop_subscriber()
        client = self._sync_client
        if client is None:
            return
        drain(self, 2 * self._timeout)
        if self._factory is not None:
            self._sync_client = None
        _close_sync(client, cluster=self.cluster, made=self._factory is not None)

    async def aclose(self) -> None:
        """Close this event loop's asyncio client if this layer created it (after waiting, at
        most twice the socket timeout, for the writes its fetch tasks still make), and stop the
        layer's backplane subscriber (told to stop; its thread ends within a heartbeat)."""
        self._stop_subscriber(wait=False)
        if self._factory is None and self._given is None:
            return
        import asyncio

        await adrain(self, 2 * (self._timeout if self._factory is None else self._factory.timeout))
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            # A private client made from the user's is on a pool of ours it does not own.
            pooled = self._factory is None and not self.cluster
            await (client.connection_pool.disconnect() if pooled else client.aclose())

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

    def encode(self, entry: Entry, key: CacheKey) -> bytes:
        """The bytes this layer stores for ``entry`` at ``key`` (its envelope, for a raw write).

        Raises:
            UnstorableValue: the serializer refuses the value, or it is over
                ``max_payload_bytes``.
        """
        return self._envelope.encode(entry, self.redis_key(key))

    def redis_key(self, key: CacheKey) -> str:
        """The Redis key holding ``key``'s entry."""
        return f"{self._base}{{{key.text}}}"

    def _lease_value(self, token: int) -> str:
        return f"{token}:{self._owner}"

    def _ttl_ms(self, entry: Entry) -> int:
        # Never past a mark's lifetime: an entry must be gone before a mark fencing it expires.
        return min(math.ceil((entry.error_until - self._clock.time()) * 1000.0), self._tag_ms)

    def mark_key(self, name: str) -> str:
        """The Redis key of a tag's mark (``name`` from ``cacheward._core.tags``)."""
        return f"{self._base}mark:{{{name}}}"

    def _marks(self, key: CacheKey) -> tuple[str, ...]:
        """The marks an entry of ``key`` is checked against: its function's ``cache_clear``
        and its tags."""
        return (
            self.mark_key(clear_mark(key.namespace)),
            *(self.mark_key(tag_mark(tag)) for tag in key.tags),
        )

    def _inline_marks(self, key: CacheKey) -> tuple[str, ...]:
        """The marks passed to a script with the entry's own keys: all of them, except on
        Redis Cluster, where they live in other slots (read by :meth:`_cluster_fenced`)."""
        return () if self.cluster else self._marks(key)

    def _fenced(self, data: bytes, marks: list[Any]) -> bool:
        """Whether one of ``marks`` (their values) fences the entry ``data``."""
        stamps = entry_stamps(data)
        if stamps is None or not fenced(stamp_of(*stamps), marks):
            return False
        self._counters.add("tag_misses")
        return True

    def _cluster_fenced(self, data: Any, key: CacheKey) -> Plan[bool]:
        """On Redis Cluster: whether a mark fences the bytes read (a second round trip)."""
        if not self.cluster or not isinstance(data, bytes) or entry_stamps(data) is None:
            return False
        marks = yield _Command(self, "mget_nonatomic", (list(self._marks(key)),), read=True)
        return self._fenced(data, marks)

    def _decode(self, data: bytes | None, key: CacheKey) -> Entry | None:
        counters = self._counters
        if data is None:
            counters.add("misses")
            return None
        try:
            entry = self._envelope.decode(data, self.redis_key(key), now=self._clock.time())
        except PayloadError as exc:
            counters.add(f"payload_{exc.reason}")
            emit(EventKind.SERIALIZER_REJECTED, self.name, layer=self.name, error=exc)
            return None
        if entry.error_until <= self._clock.time():
            counters.add("expired")
            return None
        counters.add("hits")
        return entry

    def _encode(
        self, entry: Entry, value_key: str, token: int
    ) -> tuple[bytes, UnstorableValue | None]:
        """The envelope for a write, or ``b""`` and why the value cannot be stored (counted)."""
        try:
            return self._envelope.encode(entry, value_key, token=token), None
        except UnstorableValue as exc:
            too_large = exc.reason == "too_large"
            self._counters.add("writes_too_large" if too_large else "encode_errors")
            return b"", exc

    def _put_args(
        self, key: CacheKey, entry: Entry | None, token: int, *, release: bool, lease_ttl: float
    ) -> tuple[tuple[tuple[str, ...], tuple[Any, ...]] | None, UnstorableValue | None]:
        """The put script's keys and arguments (``None`` when there is nothing to send: no
        entry to store, or an expired or unstorable one, and no lease to release), and the
        reason the value could not be stored, if it could not."""
        payload = b""
        ttl_ms = 0
        refused: UnstorableValue | None = None
        value_key = self.redis_key(key)
        if entry is not None:
            ttl_ms = self._ttl_ms(entry)
            if ttl_ms > 0:
                payload, refused = self._encode(entry, value_key, token)
        if not payload and not release:
            return None, refused
        args = (
            payload,
            max(ttl_ms, 1),
            token,
            repr(entry.created if entry is not None else 0.0),
            self._lease_value(token),
            "1" if release else "0",
            max(1, math.ceil(lease_ttl * 1000.0)),
            repr(MAX_CLOCK_SKEW),
        )
        keys = (value_key, value_key + ":lease", value_key + ":inv", *self._inline_marks(key))
        return (keys, args), refused

    def _begin(self, read: bool) -> _Stall:
        """Admit one command past the stall guard, or raise :class:`_Stalled`.

        A write or a lease command is refused only when the probe confirms that no reply is
        waiting on any in-flight connection: skipping one can cost an extra backend fetch (a
        lease not taken, a value other processes wait for and never see), and a process
        starved of CPU (threads queued for the GIL) can look like a silent Redis for tens of
        milliseconds while the replies sit unread in its sockets.
        """
        stall = self._stall
        if not stall.begin(read=read):
            raise _Stalled(f"Redis sent nothing for {stall.after:.3f} s; command not sent")
        return stall

    def _failed(self, exc: BaseException) -> bool:
        """Count a failed operation; ``True`` when it is a miss rather than a Redis failure
        (an exhausted pool, an error about this one key such as ``WRONGTYPE``, or a command
        not sent because Redis has gone silent): see ``cacheward._rediskit.sick``."""
        if isinstance(exc, _Stalled):
            self._counters.add("stalled")
            return True
        fault = classify(exc)
        if fault is Fault.POOL_FULL:
            self._counters.add("pool_exhausted")
        elif fault is Fault.KEY:
            self._counters.add("key_errors")
        else:
            self._counters.add("timeouts" if is_timeout(exc) else "errors")
        return not sick(fault)

    # --- the plans: every operation, once for both colours (see cacheward._plan) ---

    def _script_plan(
        self, name: str, keys: tuple[str, ...], args: tuple[Any, ...], *, read: bool = False
    ) -> Plan[Any]:
        lua = script(name)
        try:
            return (yield _Command(self, "evalsha", (lua.sha, len(keys), *keys, *args), read=read))
        except Exception as exc:
            if not is_noscript(exc):
                raise
        # NOSCRIPT means it did not run: loading it and running again is safe.
        yield _Command(self, "script_load", (lua.source,))
        return (yield _Command(self, "evalsha", (lua.sha, len(keys), *keys, *args), read=read))

    def _get_plan(self, key: CacheKey) -> Plan[Entry | None]:
        value_key = f"{self._base}{{{key.text}}}"
        try:
            if self.cluster:
                data = yield _Command(self, "get", (value_key,), read=True)
                if (yield from self._cluster_fenced(data, key)):
                    data = None
            else:
                # The entry with its marks (cache_clear, tags) in one command (one slot).
                data, *marks = yield _Command(
                    self, "mget", ((value_key, *self._marks(key)),), read=True
                )
                if isinstance(data, bytes) and self._fenced(data, marks):
                    data = None
        except Exception as exc:
            if self._failed(exc):
                return None
            raise
        return self._decode(data, key)

    def _probe_plan(self, key: CacheKey) -> Plan[Probed | None]:
        value_key = self.redis_key(key)
        keys = [value_key, value_key + ":inv", *self._marks(key)]
        try:
            # One command (on Cluster the marks live in other slots: mget_nonatomic splits it).
            command = "mget_nonatomic" if self.cluster else "mget"
            data, *marks = yield _Command(self, command, (keys,), read=True)
        except Exception as exc:
            if self._failed(exc):
                return None  # no answer (a full pool, a stalled Redis): nothing to tell
            raise
        if isinstance(data, bytes) and self._fenced(data, marks[1:]):
            return Probed(entry=None, marks=tuple(marks), fenced=True)
        return Probed(entry=self._decode(data, key), marks=tuple(marks))

    def _put_plan(
        self, key: CacheKey, entry: Entry | None, token: int, *, release: bool, lease_ttl: float
    ) -> Plan[bool | None]:
        """Store (and release): ``True`` stored, ``False`` not (a newer entry, or Redis could
        not answer), ``None`` refused by an invalidation mark (the value is older than the
        data). A value that cannot be stored raises :class:`UnstorableValue` after the lease
        was released saying no value is coming."""
        prepared, refused = self._put_args(key, entry, token, release=release, lease_ttl=lease_ttl)
        stored: Any = 0
        if prepared is not None:
            try:
                stored, released, *fenced = yield from self._script_plan("cache_put.lua", *prepared)
            except Exception as exc:
                if not self._failed(exc):
                    raise
            else:
                if release:
                    self._counters.add("leases_released" if released else "leases_lost")
                if fenced and fenced[0]:
                    self._counters.add("writes_fenced")
                    if refused is None:
                        return None
                elif prepared[1][0]:
                    self._counters.add("writes" if stored else "writes_refused")
        if refused is not None:
            raise refused
        return bool(stored)

    def _lease_plan(self, key: CacheKey, ttl: float) -> Plan[LeaseReply]:
        value_key = self.redis_key(key)
        keys = (value_key + ":lease", value_key + ":fence", value_key, *self._inline_marks(key))
        ttl_ms = max(1, math.ceil(ttl * 1000.0))
        now = repr(self._clock.time())
        refused: bytes | None = None
        for _ in range(2):
            try:
                token, data = yield from self._script_plan(
                    "cache_lease_acquire.lua", keys, (ttl_ms, self._owner, self._fence_ms, now)
                )
            except Exception as exc:
                if self._failed(exc):
                    return LeaseReply()  # fetch without a lease
                raise
            token = int(token)
            if data is not None and (yield from self._cluster_fenced(data, key)):
                data = None
            found = None if data is not None and data == refused else self._decode(data, key)
            if token < 0 and data is not None and found is None and now != "0":
                # The stored bytes claim a freshness they do not have: ask again, ignoring it.
                now, refused = "0", data
                continue
            break
        if token > 0:
            self._counters.add("leases_acquired")
            return LeaseReply(token=token, entry=found)
        if token == 0:
            self._counters.add("leases_busy")
            return LeaseReply(entry=found, busy=True)
        self._counters.add("leases_declined")
        return LeaseReply(entry=found)

    def _release_plan(self, key: CacheKey, token: int) -> Plan[None]:
        value_key = self.redis_key(key)
        result = yield from self._script_plan(
            "cache_lease_release.lua", (value_key + ":lease",), (self._lease_value(token),)
        )
        self._counters.add("leases_released" if result else "leases_lost")

    def _fence_plan(
        self, key: CacheKey, entry: Entry | None, announce: tuple[str, str]
    ) -> Plan[int]:
        value_key = self.redis_key(key)
        payload, ttl_ms = b"", 0
        if entry is not None:
            ttl_ms = self._ttl_ms(entry)
            if ttl_ms > 0:
                # Not storable: the fence still deletes the old entry (never leaves it).
                payload, _ = self._encode(entry, value_key, 0)
        keys = (value_key, value_key + ":lease", value_key + ":fence", value_key + ":inv")
        channel, message = announce
        args = (self._fence_ms, payload, max(ttl_ms, 1), channel, message)
        try:
            mark = yield from self._script_plan("cache_invalidate.lua", keys, args)
        except Exception as exc:
            self._failed(exc)
            raise
        self._counters.add("fences")
        return int(mark)

    def _delete_plan(self, key: CacheKey) -> Plan[None]:
        yield _Command(self, "delete", (self.redis_key(key),))

    def _tags_plan(self, names: tuple[str, ...], announce: tuple[str, str]) -> Plan[int]:
        keys = tuple(self.mark_key(name) for name in names)
        channel, message = announce
        try:
            if self.cluster:  # each mark in its own slot: one script per mark
                highest = 0
                for index, one in enumerate(keys):
                    last = index == len(keys) - 1
                    args = (self._tag_ms, channel if last else "", message)
                    mark = yield from self._script_plan("cache_tags.lua", (one,), args)
                    highest = max(highest, mark)
            else:
                args = (self._tag_ms, channel, message)
                highest = yield from self._script_plan("cache_tags.lua", keys, args)
        except Exception as exc:
            self._failed(exc)
            raise
        self._counters.add("tag_fences")
        return int(highest)

    # --- the Layer protocol (one line per colour) ---

    def get(self, key: CacheKey) -> Entry | None:
        """Return ``key``'s entry, or ``None`` (missing, invalid bytes, or no free connection).

        Raises:
            redis.RedisError: Redis failed or timed out (the driver's breaker counts it).
        """
        return perform(self._get_plan(key))

    async def aget(self, key: CacheKey) -> Entry | None:
        """Async :meth:`get`."""
        return await aperform(self._get_plan(key))

    def probe(self, key: CacheKey) -> Probed | None:
        """Return ``key``'s entry with the marks of the invalidations that concern it (its own,
        its function's ``cache_clear``, its tags'), in one round trip: what the backplane's
        re-validation needs to tell an entry Redis lost (restart, flush, eviction, expiry)
        from one that was invalidated. ``None``: no answer (no free connection, a stall).

        Raises:
            redis.RedisError: Redis failed or timed out (the driver's breaker counts it).
        """
        return perform(self._probe_plan(key))

    async def aprobe(self, key: CacheKey) -> Probed | None:
        """Async :meth:`probe`."""
        return await aperform(self._probe_plan(key))

    def set(self, key: CacheKey, entry: Entry) -> None:
        """Store ``entry`` until its ``error_until``, unless Redis holds one created later."""
        perform(self._put_plan(key, entry, 0, release=False, lease_ttl=0))

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        """Async :meth:`set`."""
        await aperform(self._put_plan(key, entry, 0, release=False, lease_ttl=0))

    def delete(self, key: CacheKey) -> None:
        """Remove ``key``'s entry."""
        perform(self._delete_plan(key))

    async def adelete(self, key: CacheKey) -> None:
        """Async :meth:`delete`."""
        await aperform(self._delete_plan(key))

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

    def _pattern(self) -> str:
        # "{" right after the version: no other layer's keys start with this (":" and "{" are
        # refused in prefix and namespace).
        return self._base + "{*"

    # --- leases ---

    def lease(self, key: CacheKey, *, ttl: float) -> LeaseReply:
        """Take ``key``'s lease for ``ttl`` seconds and read its entry, in one round trip.

        No lease is taken when the stored entry is fresh (use it: there is nothing to fetch),
        or when the last holder said no value is coming (fetch without waiting).

        Raises:
            redis.RedisError: Redis failed, timed out or has no free connection; the driver
                then fetches without a lease, under its in-process protections.
        """
        return perform(self._lease_plan(key, ttl))

    async def alease(self, key: CacheKey, *, ttl: float) -> LeaseReply:
        """Async :meth:`lease`."""
        return await aperform(self._lease_plan(key, ttl))

    def publish(
        self, key: CacheKey, entry: Entry | None, token: int, *, lease_ttl: float
    ) -> bool | None:
        """Store ``entry`` fetched under lease ``token`` and release the lease, in one round
        trip (see :meth:`set_fenced` for when the entry is stored).

        When there is nothing to store (``entry`` is ``None``, expired, or the serializer
        refuses it) the released lease says "no value is coming" for ``lease_ttl`` seconds, so
        other processes fetch for themselves at once instead of waiting for it.

        Returns:
            Whether the entry was stored; ``None`` (falsy) when it was refused because the key
            was invalidated or written (:meth:`fence`) after the lease was taken.
        """
        return perform(self._put_plan(key, entry, token, release=True, lease_ttl=lease_ttl))

    async def apublish(
        self, key: CacheKey, entry: Entry | None, token: int, *, lease_ttl: float
    ) -> bool | None:
        """Async :meth:`publish`."""
        return await aperform(self._put_plan(key, entry, token, release=True, lease_ttl=lease_ttl))

    def acquire_lease(self, key: CacheKey, *, ttl: float) -> int | None:
        """Take ``key``'s lease for ``ttl`` seconds (:meth:`lease` without the entry).

        Returns:
            The fencing token (> 0) if this process now holds the lease; ``None`` if another
            process does, or if a fresh entry is stored (there is nothing to fetch).
        """
        return self.lease(key, ttl=ttl).token

    async def aacquire_lease(self, key: CacheKey, *, ttl: float) -> int | None:
        """Async :meth:`acquire_lease`."""
        return (await self.alease(key, ttl=ttl)).token

    def release_lease(self, key: CacheKey, token: int) -> None:
        """Give ``key``'s lease back if this process still holds it under ``token``."""
        perform(self._release_plan(key, token))

    async def arelease_lease(self, key: CacheKey, token: int) -> None:
        """Async :meth:`release_lease`."""
        await aperform(self._release_plan(key, token))

    def set_fenced(self, key: CacheKey, entry: Entry, token: int) -> bool:
        """Store ``entry`` fetched under lease ``token``; never replace a newer entry.

        The write goes through if the lease is still held under ``token``; otherwise only if
        Redis holds no entry, or one created before ``entry`` and written under an older token
        (a holder whose lease expired, was evicted or was taken over cannot overwrite what a
        later holder stored). ``token`` 0 is an unfenced write, decided by ``created`` alone.

        Returns:
            Whether the entry was stored.
        """
        return bool(perform(self._put_plan(key, entry, token, release=False, lease_ttl=0)))

    async def aset_fenced(self, key: CacheKey, entry: Entry, token: int) -> bool:
        """Async :meth:`set_fenced`."""
        return bool(await aperform(self._put_plan(key, entry, token, release=False, lease_ttl=0)))

    def fence(
        self, key: CacheKey, entry: Entry | None = None, *, announce: tuple[str, str] = ("", "")
    ) -> int:
        """Delete ``key``'s entry (or store ``entry`` over it), drop its lease and fence every
        lease taken before, in one round trip: a rebuild already under way in any process
        cannot store its (older) result afterwards. ``announce`` is a ``(channel, message)``
        published in the same script (the backplane, see docs/caching.md).

        Returns:
            The invalidation mark (above every token handed out for the key so far).

        Raises:
            redis.RedisError: Redis failed or timed out (the driver keeps the invalidation
                and replays it when Redis answers again).
        """
        return perform(self._fence_plan(key, entry, announce))

    async def afence(
        self, key: CacheKey, entry: Entry | None = None, *, announce: tuple[str, str] = ("", "")
    ) -> int:
        """Async :meth:`fence`."""
        return await aperform(self._fence_plan(key, entry, announce))

    def fence_tags(self, names: tuple[str, ...], *, announce: tuple[str, str] = ("", "")) -> int:
        """Raise the marks ``names`` (tags, or a function's ``cache_clear``: see
        ``cacheward._core.tags``) in one round trip, O(1) writes each, publishing ``announce``
        in the same script: every entry carrying one of them made before (or by a rebuild
        whose lease was taken before) is a miss from now on, and no such rebuild is stored.

        Returns:
            The highest mark.

        Raises:
            redis.RedisError: Redis failed or timed out (the driver keeps the invalidation
                and replays it when Redis answers again).
        """
        return perform(self._tags_plan(names, announce))

    async def afence_tags(
        self, names: tuple[str, ...], *, announce: tuple[str, str] = ("", "")
    ) -> int:
        """Async :meth:`fence_tags`."""
        return await aperform(self._tags_plan(names, announce))

    # --- introspection ---

    def stats(self) -> RedisLayerStats:
        """Counters since the layer was made: hits, misses, errors, timeouts, pool exhaustion,
        refused payloads by reason (``payload_tampered``, ...), writes, leases."""
        return RedisLayerStats(**self._counters.snapshot())

    def events(self) -> dict[str, int]:
        """The counters of :meth:`stats` as a ``dict`` (deprecated: use :meth:`stats`)."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        source = self._factory.url if self._factory is not None else "client"
        return (
            f"RedisLayer({source!r}, prefix={self.prefix!r}, namespace={self.namespace!r}, "
            f"version={self.version}, serializer={self.serializer!r})"
        )


class Factory:
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

    def _common(self, *, is_async: bool) -> dict[str, Any]:
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry": no_retry(is_async=is_async),
            "health_check_interval": 0,
        }

    def sync_client(self) -> Any:
        import redis
        import redis.cluster

        # A plain pool with a bound: when it is full, redis-py raises MaxConnectionsError at
        # once, which the layer turns into a miss (a blocking pool would add a wait and, on
        # asyncio, a Condition round trip to every command).
        options = self._common(is_async=False)
        options["max_connections"] = self.max_connections
        if self.cluster:
            base = redis.SSLConnection if self.url.startswith("rediss:") else redis.Connection
            options["connection_class"] = deadline_class(base)
            return redis.cluster.RedisCluster.from_url(self.url, **options)
        return redis.Redis.from_pool(redis.ConnectionPool.from_url(self.url, **options))

    def async_client(self) -> Any:
        import redis.asyncio
        import redis.asyncio.cluster

        options = self._common(is_async=True)
        options["max_connections"] = self.max_connections
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(self.url, **options)
        return redis.asyncio.Redis.from_pool(
            redis.asyncio.ConnectionPool.from_url(self.url, **options)
        )
