"""Redis Sentinel, and safe redis-py clients for any URL.

``RedisLayer.from_url("redis+sentinel://...")`` and :func:`redis_client` build clients that ask
the Sentinels which server is the master and follow it through a failover. While the master is
gone and no replica has been promoted yet, every command fails fast (a refused connection, or
the connect timeout), so the layer's breaker turns the switch into misses; once the Sentinels
name the new master, the next connection goes there.

The URL: ``redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db]``
with the Sentinels' addresses (port 26379 when left out), the monitored service's name
(``sentinel monitor <service> ...`` in their configuration) and the database number. The
password is the Redis servers' password; the query ``?sentinel_password=...`` gives the
Sentinels' own, if they have one.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cacheward._config import Duration
from cacheward._errors import ConfigurationError

__all__ = ["SCHEME", "SentinelTarget", "factory_for", "parse_sentinel_url", "redis_client"]

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
_QUERY = frozenset({"sentinel_password"})


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL, or raise :class:`ConfigurationError` naming ``url``."""
    example = "redis+sentinel://127.0.0.1:26379,127.0.0.2:26379/mymaster/0"
    parts = urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise ConfigurationError(f"url must start with {SCHEME}://, got {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
    sentinels = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), url)
        sentinels.append((host, port))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigurationError(
            f"url must name the Sentinel service (and optionally the db) after the hosts, "
            f"e.g. {example}; got {url!r}"
        )
    service = unquote(path[0])
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ConfigurationError(f"url's db must be a number, got {path[1]!r} in {url!r}")
        db = int(path[1])
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - _QUERY)
    if unknown:
        raise ConfigurationError(
            f"url has unknown options {', '.join(unknown)} (supported: sentinel_password)"
        )
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def _host_port(item: str, url: str) -> tuple[str, int]:
    if not item:
        raise ConfigurationError(f"url lists an empty Sentinel address: {url!r}")
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigurationError(f"url lists a Sentinel without a host: {item!r} in {url!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"url lists a Sentinel port that is not 1-65535: {item!r} in {url!r}"
        )
    return host, int(port_text)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    netloc = f"{userinfo}@{hosts}" if at else hosts
    query = "sentinel_password=***" if "sentinel_password" in parts.query else parts.query
    return parts._replace(netloc=netloc, query=query).geturl()


def _no_retry(*, asynchronous: bool = False) -> dict[str, Any]:
    from redis.backoff import NoBackoff

    if asynchronous:  # the asyncio kind (redis-py 8.2 warns on a synchronous Retry there)
        from redis.asyncio.retry import Retry as AsyncRetry

        return {"retry": AsyncRetry(NoBackoff(), 0)}
    from redis.retry import Retry

    return {"retry": Retry(NoBackoff(), 0)}


class SentinelFactory:
    """Builds redis-py clients for the master of a Sentinel-monitored service.

    Every connection, to the Sentinels as to the servers, has the same socket and connect
    timeouts and no client-side retries (redis-py's default retry would add seconds of back-off
    per dead Sentinel to every master lookup).
    """

    __slots__ = ("cluster", "connect_timeout", "max_connections", "target", "timeout", "url")

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        cluster: bool,
    ) -> None:
        if cluster:
            raise ConfigurationError(
                "cluster=True cannot be combined with a redis+sentinel:// url: Sentinel "
                "monitors standalone masters; use a redis:// url of a cluster node instead"
            )
        self.target = parse_sentinel_url(url)
        #: For reprs and logs: the URL without its passwords.
        self.url = _redacted(url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.cluster = False

    def _sentinel_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "health_check_interval": 0,
            **_no_retry(),
        }
        if self.target.sentinel_password is not None:
            options["password"] = self.target.sentinel_password
        return options

    def _master_options(self) -> dict[str, Any]:
        target = self.target
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
            "health_check_interval": 0,
            "max_connections": self.max_connections,
            "db": target.db,
            "username": target.username,
            "password": target.password,
            **_no_retry(),
        }

    def sync_client(self) -> Any:
        import redis
        from redis.sentinel import Sentinel

        class SentinelRedis(redis.Redis):
            """Closing the client closes its Sentinel connections too."""

            def close(self) -> None:
                super().close()
                pool: Any = self.connection_pool
                for client in pool.sentinel_manager.sentinels:
                    client.close()

        sentinel: Any = Sentinel(  # type: ignore[no-untyped-call]
            list(self.target.sentinels), sentinel_kwargs=self._sentinel_options()
        )
        return sentinel.master_for(
            self.target.service, redis_class=SentinelRedis, **self._master_options()
        )

    def async_client(self) -> Any:
        import redis.asyncio
        from redis.asyncio.sentinel import Sentinel

        class AsyncSentinelRedis(redis.asyncio.Redis):
            """Closing the client closes its Sentinel connections too."""

            async def aclose(self, close_connection_pool: bool | None = None) -> None:
                await super().aclose(close_connection_pool)
                pool: Any = self.connection_pool
                for client in pool.sentinel_manager.sentinels:
                    await client.aclose()

        no_retry = _no_retry(asynchronous=True)
        sentinel: Any = Sentinel(  # type: ignore[no-untyped-call]
            list(self.target.sentinels), sentinel_kwargs={**self._sentinel_options(), **no_retry}
        )
        return sentinel.master_for(
            self.target.service,
            redis_class=AsyncSentinelRedis,
            **{**self._master_options(), **no_retry},
        )


def factory_for(
    url: str, *, timeout: float, connect_timeout: float, max_connections: int, cluster: bool
) -> Any:
    """The client factory for ``url``: Sentinel for ``redis+sentinel://``, else the plain one."""
    if is_sentinel_url(url):
        return SentinelFactory(
            url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            cluster=cluster,
        )
    from cacheward._redis import Factory

    return Factory(
        url,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
        cluster=cluster,
    )


def redis_client(
    url: str,
    *,
    timeout: Duration = 0.1,
    connect_timeout: Duration | None = None,
    max_connections: int = 64,
    cluster: bool = False,
    asyncio: bool = False,
) -> Any:
    """Build a redis-py client with cacheward's safe settings, for any Redis URL.

    The client :meth:`RedisLayer.from_url <cacheward.RedisLayer.from_url>` would build: a
    per-operation and connect timeout, no client-side retries, a bounded connection pool. Use it
    where cacheward takes a client, such as :class:`~cacheward.RedisTokenBucket`::

        bucket = cw.RedisTokenBucket(
            cw.redis_client("redis+sentinel://10.0.0.1,10.0.0.2/cache"), name="db", rate=50
        )

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, or ``redis+sentinel://hosts/service[/db]``
            (see ``docs/redis.md``).
        timeout: the per-operation socket timeout (default 0.1 s).
        connect_timeout: the connect timeout (defaults to ``timeout``).
        max_connections: the connection pool's size.
        cluster: connect to a Redis Cluster (``url`` names any one node).
        asyncio: build a ``redis.asyncio`` client (for ``async def`` code) instead.

    Raises:
        ConfigurationError: an argument is invalid or redis-py is missing.
    """
    from cacheward._redis import RedisLayer

    # The layer's constructor validates the URL and settings and builds the factory; the
    # client is the one the layer itself would use.
    layer = RedisLayer.from_url(
        url,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
        cluster=cluster,
    )
    factory = layer._factory
    return factory.async_client() if asyncio else factory.sync_client()
