"""Real faults for your own tests: a TCP proxy in front of Redis, and a layer that misbehaves.

- :class:`RedisProxy` sits between your Redis clients and a Redis server on loopback and, on
  command, delays every chunk, trickles replies one byte at a time, blackholes (connections stay
  open, nothing is answered), cuts every reply after a few bytes, resets every connection, or
  refuses new ones. The faults are the network's, so they reach redis-py exactly as an incident
  would (partial replies, RSTs, silence), which a mocked client cannot show.
- :class:`ChaosLayer` wraps any cache layer (``MemoryLayer``, ``RedisLayer``, your own) and,
  following a schedule you give, makes its operations raise, wait, hang (bounded) or return
  corrupt entries.

Both are meant for tests: everything is bounded (a hang lasts at most ``max_hang``, the proxy
listens on loopback only) and nothing needs a running event loop of yours.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, Literal

from cacheward._config import duration
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._errors import ConfigurationError

__all__ = ["ChaosError", "ChaosLayer", "Fault", "RedisProxy", "unused_port"]

HOST: Final = "127.0.0.1"

ProxyMode = Literal["pipe", "delay", "trickle", "blackhole", "cut", "refuse"]


def _ephemeral_low() -> int:
    """The first port of the system's ephemeral range (Linux's default when it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def unused_port(*, rng: random.Random | None = None, low: int = 10_000) -> int:
    """A loopback port that is free now and outside the ephemeral range.

    Ports in the ephemeral range are handed out as outgoing connections' source ports, so a
    server that stops listening there (a refused or restarted one) may find its port taken
    when it listens again.
    """
    high = max(low + 1000, _ephemeral_low())
    draw = rng or random.Random()
    for _ in range(200):
        port = draw.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high} after 200 tries")


class RedisProxy:
    """A loopback TCP proxy in front of ``target_host:target_port``, run on its own thread.

    Point your clients at :attr:`url` (or :attr:`port`) instead of the server's. Switch faults at
    any time, from any thread; :meth:`heal` undoes all of them::

        with RedisProxy(6379) as proxy:
            layer = cw.RedisLayer.from_url(proxy.url, timeout=0.1)
            proxy.blackhole()   # a partition: every command times out
            ...
            proxy.heal()

    Args:
        target_port: the Redis server's port.
        target_host: the Redis server's host (default loopback).
        port: the port to listen on (default: a free one below the system's ephemeral port
            range, kept across :meth:`refuse` / :meth:`heal`: a port the system picks could
            be taken as an outgoing connection's source port while the proxy refuses, and
            :meth:`heal` could then not listen again).
    """

    def __init__(self, target_port: int, *, target_host: str = HOST, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = HOST
        self.port = port or unused_port()
        #: Seconds every chunk waits, each way (:meth:`delay`).
        self.latency = 0.0
        #: Seconds between two bytes of a reply (:meth:`trickle`; 0: off).
        self.trickle_interval = 0.0
        #: Whether nothing is forwarded (:meth:`blackhole`).
        self.blackholed = False
        #: Bytes of each reply forwarded before the connection is cut (:meth:`cut_replies`).
        self.cut_after: int | None = None
        #: Connections accepted so far.
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def mode(self) -> ProxyMode:
        """The fault in force (``"pipe"`` when none)."""
        if self._server is None and self._loop is not None:
            return "refuse"
        if self.blackholed:
            return "blackhole"
        if self.cut_after is not None:
            return "cut"
        if self.trickle_interval:
            return "trickle"
        return "delay" if self.latency else "pipe"

    # -- lifecycle --

    def start(self) -> RedisProxy:
        """Start listening (returns once the socket is bound)."""
        if self._loop is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="RedisProxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the proxy's thread did not start")
        self._call(self._listen)
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, and stop the proxy's thread."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._unlisten)
            self._call(self._reset_all)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = None
        self._ready.clear()

    def __enter__(self) -> RedisProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults --

    def delay(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0: no delay)."""
        self.latency = duration("seconds", seconds)

    def trickle(self, interval: float) -> None:
        """Send replies one byte every ``interval`` seconds (a slow reply: bytes keep arriving,
        so a per-``recv`` socket timeout never fires). 0 switches it off."""
        self.trickle_interval = duration("interval", interval)

    def blackhole(self) -> None:
        """Swallow everything from now on: connections stay open and nothing is answered."""
        self.blackholed = True

    def cut_replies(self, after_bytes: int = 1) -> None:
        """Forward only the first ``after_bytes`` of each reply, then reset the connection
        (a connection dropped mid-reply)."""
        if after_bytes < 0:
            raise ConfigurationError(f"after_bytes must be an int >= 0, got {after_bytes!r}")
        self.cut_after = after_bytes

    def reset(self) -> None:
        """Abort every open connection with a TCP RST (new connections still work)."""
        self._call(self._reset_all)

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and reset the open ones."""
        self._call(self._unlisten)
        self._call(self._reset_all)

    def heal(self) -> None:
        """Back to a plain pipe: no delay, no trickle, no blackhole, no cuts, listening."""
        self.latency = 0.0
        self.trickle_interval = 0.0
        self.blackholed = False
        self.cut_after = None
        self._call(self._listen)

    # -- the proxy's own loop --

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                # A connection accepted as the proxy stopped is still being set up by a task
                # (cancelling that task would leak its socket): let the setup finish, then
                # abort every socket the loop holds, then end the handlers. The selector
                # loop's transport table is not public API: used only if present.
                loop.run_until_complete(asyncio.sleep(0.02))
                for transport in list(getattr(loop, "_transports", {}).values()):
                    transport.abort()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _call(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running: call start() first")
        asyncio.run_coroutine_threadsafe(fn(), loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        # Known at once, so a reset or a stop while the upstream connect is pending closes it.
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), timeout=5
                )
            except (OSError, asyncio.TimeoutError):
                _rst(writer)
                return
            upstream = up_writer
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, reply=False),
                self._pump(up_reader, writer, reply=True),
                return_exceptions=True,
            )
        finally:
            for w in (writer, upstream):
                if w is not None:
                    await self._close(w)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close ``writer`` with a FIN; if its peer does not take the buffered bytes within a
        second (a blackholed or paused peer), abort it. It stays in ``_writers`` until then,
        so a reset or a stop meanwhile aborts it (a closing socket never outlives the proxy)."""
        with contextlib.suppress(Exception):
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
        if not writer.transport.is_closing() or writer.transport.get_write_buffer_size():
            _rst(writer)
        self._writers.discard(writer)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, reply: bool
    ) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.blackholed:
                    continue  # swallowed: the peer waits until it times out
                cut = self.cut_after if reply else None
                if cut is not None:
                    writer.write(chunk[:cut])
                    with contextlib.suppress(Exception):
                        await writer.drain()
                    await self._reset_all()
                    return
                if reply and self.trickle_interval:
                    for i in range(len(chunk)):
                        writer.write(chunk[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(self.trickle_interval)
                    continue
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _reset_all(self) -> None:
        for writer in list(self._writers):
            _rst(writer)
        self._writers.clear()

    def __repr__(self) -> str:
        return f"RedisProxy(port={self.port} -> {self.target[1]}, mode={self.mode!r})"


_LINGER_ZERO: Final = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    writer.transport.abort()


# --- a layer that misbehaves on schedule --------------------------------------------------------

#: What a :class:`ChaosLayer` operation does instead of (or before) its normal work.
Fault = Literal["ok", "error", "latency", "hang", "corrupt"]
_FAULTS: Final = frozenset({"ok", "error", "latency", "hang", "corrupt"})


class ChaosError(ConnectionError):
    """The error a :class:`ChaosLayer` raises for an ``"error"`` step (a ``ConnectionError``,
    as a network failure of a real layer would be)."""


class ChaosLayer:
    """Wrap any cache layer and make its operations fail on a schedule.

    Each operation (``get``, ``set``, ``delete``, ``clear`` and their asyncio twins) takes
    the next step of ``schedule`` (cycled; default: every operation ``"ok"``), or the step a
    ``rule(operation, count)`` returns:

    - ``"ok"``: the inner layer's answer;
    - ``"error"``: raises :class:`ChaosError`;
    - ``"latency"``: waits ``latency`` seconds, then the inner layer's answer;
    - ``"hang"``: waits ``max_hang`` seconds (bounded, so a test can never hang for ever), then
      raises :class:`TimeoutError`, as a socket timeout would;
    - ``"corrupt"``: a ``get`` returns bytes instead of an entry (what a garbled Redis reply
      looks like to the driver); a write is silently dropped.

    Only the cache protocol is wrapped (a wrapped ``RedisLayer`` takes no cross-process
    leases), and the wrapper counts as a remote layer, so it gets its own circuit breaker.

    Args:
        inner: the layer to wrap.
        schedule: the steps, in order, cycled.
        rule: instead of ``schedule``, a function of ``(operation, count)`` returning a step.
        latency: seconds a ``"latency"`` step waits (default 0.05).
        max_hang: seconds a ``"hang"`` step waits before raising (default 1).
        sleep: the blocking sleep (default :func:`time.sleep`; a ``FakeClock``'s ``sleep`` to
            take no real time).
        asleep: the asyncio sleep (default :func:`asyncio.sleep`).

    Raises:
        ConfigurationError: an unknown step, or both ``schedule`` and ``rule``.
    """

    def __init__(
        self,
        inner: Any,
        *,
        schedule: Iterable[Fault] = ("ok",),
        rule: Callable[[str, int], Fault] | None = None,
        latency: float = 0.05,
        max_hang: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        steps = tuple(schedule)
        if not steps or any(step not in _FAULTS for step in steps):
            raise ConfigurationError(
                f"schedule must be a non-empty sequence of {sorted(_FAULTS)}, got {steps!r}"
            )
        if rule is not None and steps != ("ok",):
            raise ConfigurationError("give schedule or rule, not both")
        self.inner = inner
        self.name = f"chaos({getattr(inner, 'name', type(inner).__name__)})"
        # Not local even around a MemoryLayer: a layer that can fail is treated as remote.
        self.local = False
        self.schedule = steps
        self.rule = rule
        self.latency = duration("latency", latency)
        self.max_hang = duration("max_hang", max_hang)
        self._sleep = sleep
        self._asleep = asleep
        self._lock = threading.Lock()
        self._count = 0
        #: Every step taken, in order, as ``(operation, step)``.
        self.log: list[tuple[str, Fault]] = []

    def _next(self, operation: str) -> Fault:
        with self._lock:
            count = self._count
            self._count += 1
            step = (
                self.rule(operation, count)
                if self.rule is not None
                else self.schedule[count % len(self.schedule)]
            )
            if step not in _FAULTS:
                raise ConfigurationError(f"rule returned {step!r}, not one of {sorted(_FAULTS)}")
            self.log.append((operation, step))
            return step

    def _before(self, step: Fault, operation: str) -> None:
        if step == "error":
            raise ChaosError(f"{self.name}: scheduled error in {operation}")
        if step == "latency":
            self._sleep(self.latency)
        elif step == "hang":
            self._sleep(self.max_hang)
            raise TimeoutError(f"{self.name}: {operation} hung for {self.max_hang:g}s")

    async def _abefore(self, step: Fault, operation: str) -> None:
        if step == "error":
            raise ChaosError(f"{self.name}: scheduled error in {operation}")
        if step == "latency":
            await self._asleep(self.latency)
        elif step == "hang":
            await self._asleep(self.max_hang)
            raise TimeoutError(f"{self.name}: {operation} hung for {self.max_hang:g}s")

    # -- the layer protocol --

    def get(self, key: CacheKey) -> Entry | None:
        step = self._next("get")
        self._before(step, "get")
        if step == "corrupt":
            return b"\x00garbled"  # type: ignore[return-value]
        result: Entry | None = self.inner.get(key)
        return result

    def set(self, key: CacheKey, entry: Entry) -> None:
        step = self._next("set")
        self._before(step, "set")
        if step != "corrupt":
            self.inner.set(key, entry)

    def delete(self, key: CacheKey) -> None:
        self._before(self._next("delete"), "delete")
        self.inner.delete(key)

    async def aget(self, key: CacheKey) -> Entry | None:
        step = self._next("get")
        await self._abefore(step, "get")
        if step == "corrupt":
            return b"\x00garbled"  # type: ignore[return-value]
        result: Entry | None = await self.inner.aget(key)
        return result

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        step = self._next("set")
        await self._abefore(step, "set")
        if step != "corrupt":
            await self.inner.aset(key, entry)

    async def adelete(self, key: CacheKey) -> None:
        await self._abefore(self._next("delete"), "delete")
        await self.inner.adelete(key)

    def clear(self) -> None:
        self._before(self._next("clear"), "clear")
        self.inner.clear()

    async def aclear(self) -> None:
        await self._abefore(self._next("clear"), "clear")
        await self.inner.aclear()

    def close(self, *, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` seconds) for the background writes cached functions
        started through this layer, then close the wrapped layer, if it has a ``close``.

        The writes are tracked under the layer the functions were given (this one), so the
        wrapped layer's own ``close`` would not see them."""
        from cacheward._background import drain

        drain(self, timeout)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    async def aclose(self, *, timeout: float = 5.0) -> None:
        """Async :meth:`close` (this event loop's writes, then the wrapped ``aclose``)."""
        from cacheward._background import adrain

        await adrain(self, timeout)
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()

    def __repr__(self) -> str:
        return f"ChaosLayer({self.inner!r}, schedule={self.schedule!r}, steps={self._count})"
