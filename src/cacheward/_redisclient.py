"""The clients a :class:`~cacheward.RedisLayer` talks through, and the per-command deadline.

Two things here make "a layer operation ends within the layer's own bound" hold whatever the
bytes, the client or the server do (see ``docs/redis.md``, "Every command within its bound"):

- **A deadline per command on the synchronous socket.** redis-py's synchronous
  ``socket_timeout`` bounds each ``recv``, so a Redis (or a path) that sends a reply one byte at
  a time holds a caller for as long as the bytes keep coming. Our connections wrap their socket
  (:class:`_DeadlineSocket`): before every ``recv``, ``recv_into`` and ``sendall`` it sets the
  socket timeout to what is left of the command's deadline, and once that is spent it raises
  ``socket.timeout``, which redis-py turns into its ``TimeoutError`` (and drops the connection).
  The deadline is the thread's (:func:`deadline`, set by the layer around each command, so a
  handshake, a ``MOVED`` redirection or a ``NOSCRIPT`` reload share it); outside one, each
  reply read gets ``socket_timeout`` in all. The asyncio client needs none of this: it already
  bounds the whole reply read.
- **A private client.** A client the user passes is never used as is: :func:`private_client`
  builds one with the same connection settings (host, port, db, credentials, TLS, timeouts,
  pool size), our deadline connections, no retries (``Retry(NoBackoff(), 0)``) and no health
  checks, and leaves the user's object untouched.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from cacheward import _forksafe

__all__ = ["deadline", "deadline_class", "private_client", "with_deadlines"]

_STATE: Final = threading.local()
_monotonic = time.monotonic


class deadline:  # noqa: N801 - used as a context manager, like a function
    """Bound every socket operation of this thread's Redis connections to ``seconds`` from now
    (an enclosing, earlier deadline wins)."""

    __slots__ = ("_saved", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._saved: float | None = None

    def __enter__(self) -> None:
        saved = self._saved = getattr(_STATE, "at", None)
        at = _monotonic() + self._seconds
        _STATE.at = at if saved is None or at < saved else saved

    def __exit__(self, *exc: object) -> None:
        _STATE.at = self._saved


def _extend(seconds: float) -> None:
    """Push this thread's deadline back by ``seconds`` (the time a connect took: it has its
    own bound, ``socket_connect_timeout``, and must not eat the command's)."""
    at = getattr(_STATE, "at", None)
    if at is not None:
        _STATE.at = at + seconds


class _DeadlineSocket:
    """A connected socket whose reads and writes never outlast the thread's deadline."""

    __slots__ = ("_sock", "_timeout")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._timeout: float | None = sock.gettimeout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _arm(self) -> None:
        at = getattr(_STATE, "at", None)
        if at is None:
            return
        remaining = at - _monotonic()
        if remaining <= 0:
            raise TimeoutError("the Redis command's deadline passed")  # socket.timeout
        wanted = self._timeout
        self._sock.settimeout(remaining if wanted is None or remaining < wanted else wanted)

    def recv(self, *args: Any) -> Any:
        self._arm()
        return self._sock.recv(*args)

    def recv_into(self, *args: Any) -> Any:
        self._arm()
        return self._sock.recv_into(*args)

    def sendall(self, *args: Any) -> Any:
        self._arm()
        return self._sock.sendall(*args)

    def send(self, *args: Any) -> Any:
        self._arm()
        return self._sock.send(*args)


_CLASSES: dict[type, type] = {}
_CLASSES_LOCK = _forksafe.lock()


def deadline_class(base: type) -> type:
    """``base`` (a redis-py synchronous connection class) with deadline-bound sockets."""
    if getattr(base, "_cacheward_deadline", False):
        return base
    with _CLASSES_LOCK:
        found = _CLASSES.get(base)
        if found is None:
            found = _CLASSES[base] = type(base.__name__, (_DeadlineMixin, base), {})
        return found


class _DeadlineMixin:
    """Mixed into a redis-py connection class by :func:`deadline_class`."""

    _cacheward_deadline = True
    socket_timeout: float | None

    def _connect(self) -> Any:
        began = _monotonic()
        sock = super()._connect()  # type: ignore[misc]
        _extend(_monotonic() - began)
        return _DeadlineSocket(sock)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(_STATE, "at", None) is not None:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        # Outside a layer command: the whole reply within the timeout asked for.
        timeout = kwargs.get("timeout", self.socket_timeout)
        if not isinstance(timeout, (int, float)):  # redis-py's SENTINEL: the socket timeout
            timeout = self.socket_timeout
        if timeout is None:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        with deadline(timeout):
            return super().read_response(*args, **kwargs)  # type: ignore[misc]


def with_deadlines(client: Any) -> Any:
    """Give a synchronous client built by cacheward (its pool, or for a cluster every node's
    pool to come) deadline-bound connections; returns ``client``."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.connection_class = deadline_class(pool.connection_class)
    return client


#: Connection keywords that redis-py's pools add for themselves (a new pool makes its own).
_POOL_OWNED: Final = frozenset(
    {
        "maint_notifications_pool_handler",
        "himport_registry",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "connection_pool",
        "connection_class",
    }
)


def _safe_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = {k: v for k, v in kwargs.items() if k not in _POOL_OWNED}
    options["retry"] = Retry(NoBackoff(), 0)
    # (retry_on_timeout and retry_on_error only add to a policy that never retries now)
    options.pop("retry_on_timeout", None)
    options.pop("retry_on_error", None)
    options["health_check_interval"] = 0
    return options


def private_client(client: Any, *, is_async: bool, cluster: bool) -> Any:
    """A client of our own with ``client``'s connection settings, deadline-bound connections
    (synchronous ones), no retries and no health checks. ``client`` is not changed."""
    if cluster:
        return _private_cluster(client, is_async=is_async)
    pool = client.connection_pool
    options = _safe_kwargs(dict(pool.connection_kwargs))
    max_connections = getattr(pool, "max_connections", None) or 64
    pool_class = type(pool)
    if is_async:
        import redis.asyncio
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff

        base: Any = redis.asyncio
        connection_class = pool.connection_class
        # The asyncio kind of "no retries" (redis-py 8.2 warns on a synchronous Retry here).
        options["retry"] = AsyncRetry(NoBackoff(), 0)
    else:
        import redis

        base = redis
        connection_class = deadline_class(pool.connection_class)
    if hasattr(pool, "service_name") and hasattr(pool, "sentinel_manager"):
        # A Sentinel-managed master: the same service and Sentinels, our connections.
        new_pool = pool_class(
            pool.service_name,
            pool.sentinel_manager,
            connection_class=connection_class,
            max_connections=max_connections,
            **options,
        )
    else:
        # A plain pool even for a blocking one: a full pool is a miss at once, not a wait.
        new_pool = base.ConnectionPool(
            connection_class=connection_class, max_connections=max_connections, **options
        )
    return base.Redis(connection_pool=new_pool)


def _private_cluster(client: Any, *, is_async: bool) -> Any:
    from redis.backoff import NoBackoff

    module: Any
    if is_async:
        import redis.asyncio.cluster as module
        from redis.asyncio.retry import Retry as RetryClass

        kwargs = dict(client.connection_kwargs)
    else:
        import redis.cluster as module
        from redis.retry import Retry as RetryClass  # type: ignore[assignment]

        kwargs = dict(client.get_connection_kwargs())
    startup = client.nodes_manager.startup_nodes.values()
    nodes = [module.ClusterNode(n.host, n.port) for n in startup]
    options = _safe_kwargs(kwargs)
    for name in ("host", "port", "db"):
        options.pop(name, None)
    options["retry"] = RetryClass(NoBackoff(), 0)
    if is_async:
        # Its connection keywords include some its constructor does not take.
        import inspect

        accepted = inspect.signature(module.RedisCluster.__init__).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        return module.RedisCluster(startup_nodes=nodes, **options)
    from redis.connection import Connection

    options["connection_class"] = deadline_class(kwargs.get("connection_class", Connection))
    # With a url, redis-py builds each node's pool from these options (connection_class too).
    url = f"redis://{nodes[0].host}:{nodes[0].port}"
    return module.RedisCluster(url=url, startup_nodes=nodes, **options)
