"""Real servers for fault-injection tests: ``redis-server`` processes, a 3-master cluster, a proxy.

Every process started here is stopped by its PID (never by name), also at interpreter exit if a
test forgot. Nothing listens on anything but 127.0.0.1.

Usage in a test module (pytest puts ``tests/`` on ``sys.path``)::

    import pytest
    from servers import RedisServer, RedisClusterServers, TcpProxy

    @pytest.fixture
    def server():
        with RedisServer.started() as srv:  # skips (or fails under CI) without redis-server
            yield srv

    def test_hung(server):
        server.pause()            # SIGSTOP: connections stay open, nothing answers
        ...
        server.resume()           # SIGCONT
        server.kill()             # SIGKILL
        server.restart()          # same port, empty data set
        server.config_set("maxmemory-policy", "allkeys-lru")
        server.debug_sleep(0.5)   # DEBUG SLEEP on a side connection; returns at once
        server.client_pause(0.5)  # CLIENT PAUSE 500 ALL

    def test_latency(server):
        with TcpProxy(server.port) as proxy:  # clients connect to proxy.url
            proxy.set_latency(0.05)           # every chunk delayed 50 ms each way
            proxy.trickle(0.03)               # replies one byte every 30 ms
            proxy.blackhole()                 # accept and read, never answer
            proxy.cut_replies(1)              # every reply cut after 1 byte, then RST
            proxy.reset()                     # RST every open connection
            proxy.refuse()                    # stop listening: connection refused
            proxy.heal()                      # back to a plain pipe

The proxy is the library's :class:`cacheward.testing.chaos.RedisProxy` (``TcpProxy`` adds the
``set_latency`` name the tests use).

Benchmarks import it as ``tests.servers`` (run from the repository root); without pytest,
:meth:`RedisServer.require` raises :class:`RuntimeError` instead of skipping.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cacheward.testing.chaos import RedisProxy

__all__ = [
    "RedisClusterServers",
    "RedisServer",
    "TcpProxy",
    "free_port",
    "resp_command",
    "running",
]

HOST = "127.0.0.1"

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
        _LIVE.clear()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


atexit.register(_kill_leftovers)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A loopback TCP port that is free now (and ``port + 10000`` too, for a cluster bus)."""
    # Below the ephemeral range (32768 on Linux), where outgoing connections take their source
    # ports: a killed server restarted on its port must find it free (a cluster bus at +10000).
    # CACHEWARD_TEST_PORTS="17000-17999" keeps them in a range of one's own (shared machines).
    low, high = 10_000, 22_000
    span = os.environ.get("CACHEWARD_TEST_PORTS", "")
    if span:
        first, _, last = span.partition("-")
        low, high = int(first), int(last or first) + 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        if _bindable(port) and (not cluster_bus or _bindable(port + 10_000)):
            return port
    raise RuntimeError("no free loopback port found in 200 tries")


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is not None:
        return path
    reason = f"the {binary} binary is not on PATH (install Redis 7, e.g. apt-get install redis)"
    try:
        from conftest import needs
    except ImportError:
        raise RuntimeError(f"needs {binary}: {reason}") from None
    needs(binary, reason)  # raises (a skip, or a failure under CI)
    raise AssertionError("unreachable")


# --- a minimal RESP client, so the helpers work without redis-py --------------------------------


def _encode(args: Sequence[object]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        raise RuntimeError(f"unexpected RESP reply {line!r}")


def resp_command(port: int, *args: object, timeout: float = 5.0, host: str = HOST) -> Any:
    """Send one command to ``host:port`` on a fresh connection and return the parsed reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        return _Reader(sock).reply()


# --- one redis-server -----------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` on a free loopback port, owned by this process and stopped by PID.

    Args:
        port: the port (default: a free one, chosen at the first start and kept on restart).
        args: extra ``redis-server`` arguments, e.g. ``["--maxmemory", "2mb"]``.
        cluster: start as a cluster node (``--cluster-enabled yes``; the bus port is port+10000).
        startup_timeout: how long to wait for PING to answer.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        cluster: bool = False,
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = _require("redis-server")
        self.host = HOST
        self.cluster = cluster
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(cluster_bus=cluster)
        self.extra_args = list(args)
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="cacheward-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @classmethod
    def require(cls) -> None:
        """Skip the test (fail under CI, raise outside pytest) when redis-server is missing."""
        _require("redis-server")

    @classmethod
    @contextlib.contextmanager
    def started(cls, **kwargs: Any) -> Iterator[RedisServer]:
        """``with RedisServer.started(...) as srv:`` starts it and always stops it."""
        server = cls(**kwargs)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            server.cleanup()

    # -- properties --

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The PID of the running process (``None`` when stopped)."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --

    def _command_line(self) -> list[str]:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "local",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.cluster:
            cmd += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                "no",
            ]
        return cmd + self.extra_args

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; a taken port picks another."""
        if self.running:
            return self
        for attempt in range(5):
            proc = subprocess.Popen(
                self._command_line(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with _LIVE_LOCK:
                _LIVE[proc.pid] = proc
            self._proc = proc
            self._paused = False
            if self._wait_ready():
                return self
            self._terminate(signal.SIGKILL)
            if self._fixed_port and attempt >= 2:
                break
            if not self._fixed_port:
                self.port = free_port(cluster_bus=self.cluster)
            else:
                time.sleep(0.2)  # a just-killed server's port may need a moment
        log = self.log_tail()
        raise RuntimeError(f"redis-server did not start on port {self.port}; log:\n{log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                if resp_command(self.port, "PING", timeout=0.5) == "PONG":
                    return True
            except (OSError, RuntimeError):
                pass
            time.sleep(0.01)
        return False

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for failure messages)."""
        try:
            return "\n".join((self.dir / "redis.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _terminate(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)
        self._proc = None
        self._paused = False

    def stop(self) -> None:
        """Stop it gracefully (SIGTERM, then SIGKILL after 5 s); a no-op when not running."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL it (a crash: no shutdown, open connections see a reset or EOF)."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> RedisServer:
        """Stop it if running and start again on the same port (data is gone: no persistence)."""
        self._terminate(signal.SIGKILL)
        self._fixed_port = True
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the process freezes; connections stay open and nothing answers (a hang)."""
        if self._proc is None:
            raise RuntimeError("server is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is None:
            raise RuntimeError("server is not running")
        os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with server.paused():`` pauses and always resumes."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def cleanup(self) -> None:
        """Remove the server's temporary directory (after :meth:`stop`)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- commands --

    def command(self, *args: object, timeout: float = 5.0) -> Any:
        """Run one command on a fresh connection and return the reply."""
        return resp_command(self.port, *args, timeout=timeout)

    def config_set(self, name: str, value: object) -> None:
        """``CONFIG SET name value``."""
        self.command("CONFIG", "SET", name, value)

    def flushall(self) -> None:
        """``FLUSHALL``."""
        self.command("FLUSHALL")

    def debug_sleep(self, seconds: float) -> None:
        """Block the server for ``seconds`` with ``DEBUG SLEEP`` (sent on a side connection;
        returns at once, before the server wakes)."""
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(_encode(["DEBUG", "SLEEP", f"{seconds:.3f}"]))

        def _close_later() -> None:
            with contextlib.suppress(OSError):
                sock.settimeout(seconds + 10)
                sock.recv(64)
            sock.close()

        threading.Thread(target=_close_later, daemon=True).start()
        time.sleep(0.02)  # let the server pick the command up before the caller goes on

    def client_pause(self, seconds: float, *, mode: str = "ALL") -> None:
        """``CLIENT PAUSE ms mode``: the server keeps accepting but holds clients' commands."""
        self.command("CLIENT", "PAUSE", int(seconds * 1000), mode)

    def client_unpause(self) -> None:
        """``CLIENT UNPAUSE``."""
        self.command("CLIENT", "UNPAUSE")

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` for this server with short timeouts and no retries."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"RedisServer(port={self.port}, pid={self.pid}, {state})"


# --- a 3-master cluster ---------------------------------------------------------------------------


_Startable = typing.TypeVar("_Startable", bound="_Lifecycle")


class _Lifecycle(typing.Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...


@contextlib.contextmanager
def running(servers: _Startable) -> Iterator[_Startable]:
    """Start ``servers`` (anything with ``start()`` and ``stop()``) and always stop them."""
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` nodes (no replicas) on loopback, created with redis-cli.

    ``.nodes`` are the :class:`RedisServer` objects (pause or kill one to fault a shard);
    ``.url`` / ``.startup_nodes`` point a ``RedisCluster`` client at it.
    """

    def __init__(self, *, masters: int = 3, startup_timeout: float = 20.0) -> None:
        self.cli = _require("redis-cli")
        self.nodes = [RedisServer(cluster=True) for _ in range(masters)]
        self.startup_timeout = startup_timeout

    @classmethod
    def started(cls, **kwargs: Any) -> contextlib.AbstractContextManager[RedisClusterServers]:
        """``with RedisClusterServers.started() as cluster:``."""
        return running(cls(**kwargs))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the first node (a ``RedisCluster.from_url`` seed)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [(n.host, n.port) for n in self.nodes]

    def start(self) -> RedisClusterServers:
        """Start the nodes, join them with ``redis-cli --cluster create`` and wait for state ok."""
        for node in self.nodes:
            node.start()
        addresses = [f"{n.host}:{n.port}" for n in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(
            [self.cli, *create],
            capture_output=True,
            timeout=self.startup_timeout,
            check=False,
        )
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(
                f"redis-cli --cluster create failed: {done.stdout.decode()} {done.stderr.decode()}"
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(n) for n in self.nodes):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the cluster did not reach cluster_state:ok in time")

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        try:
            info = node.command("CLUSTER", "INFO", timeout=1.0)
        except (OSError, RuntimeError):
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def node_for_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot``."""
        for node in self.nodes:
            for entry in node.command("CLUSTER", "SLOTS"):
                start, end, master = entry[0], entry[1], entry[2]
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def flushall(self) -> None:
        """``FLUSHALL`` on every node."""
        for node in self.nodes:
            node.flushall()

    def stop(self) -> None:
        """Stop every node by PID and remove their directories."""
        for node in self.nodes:
            node.stop()
            node.cleanup()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a loopback TCP proxy for latency, blackholes and resets -------------------------------------


class TcpProxy(RedisProxy):
    """:class:`cacheward.testing.chaos.RedisProxy` under the tests' older name (and
    ``set_latency`` for :meth:`~cacheward.testing.chaos.RedisProxy.delay`)."""

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction."""
        self.delay(seconds)
