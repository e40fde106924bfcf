"""A Redis Sentinel setup on loopback: a master, a replica and a Sentinel, stopped by PID.

``SentinelSetup.started()`` starts ``redis-server`` as a master on a free port, a second one
replicating it, and ``redis-server --sentinel`` monitoring the master as ``mymaster`` with a
quorum of 1 and a short ``down-after-milliseconds``, so killing the master promotes the replica
within a few seconds. Benchmarks import it as ``tests.sentinel_servers``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

try:
    from servers import HOST, RedisServer, free_port, resp_command, running
except ImportError:  # imported from the repository root (benchmarks)
    from tests.servers import HOST, RedisServer, free_port, resp_command, running

__all__ = ["SentinelServer", "SentinelSetup"]

SERVICE = "mymaster"


class SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel`` monitoring ``master_port`` as :data:`SERVICE`."""

    def __init__(
        self, master_port: int, *, down_after_ms: int = 400, failover_timeout_ms: int = 2000
    ) -> None:
        super().__init__()
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.host}:{self.port}/{SERVICE}/0"

    def _command_line(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(
                f"sentinel monitor {SERVICE} {HOST} {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
        return [
            self.binary,
            str(conf),
            "--sentinel",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
        ]

    def master_port_now(self) -> int | None:
        """The master's port as this Sentinel sees it now."""
        reply = resp_command(self.port, "SENTINEL", "get-master-addr-by-name", SERVICE)
        if not reply:
            return None
        return int(reply[1])


class SentinelSetup:
    """A master, a replica and a Sentinel; :attr:`url` is the ``redis+sentinel://`` URL.

    The URL lists a dead Sentinel address first, so every client also shows that it moves on
    to the next Sentinel.
    """

    def __init__(self, *, args: Sequence[str] = ()) -> None:
        # The master starts a replica's sync at once (diskless sync waits 5 s by default).
        self.master = RedisServer(args=["--repl-diskless-sync-delay", "0", *args])
        self.replica: RedisServer | None = None
        self.sentinel: SentinelServer | None = None
        self.dead_port = free_port()

    @classmethod
    def started(cls, **kwargs: Any) -> contextlib.AbstractContextManager[SentinelSetup]:
        return running(cls(**kwargs))

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://{HOST}:{self.dead_port},{HOST}:{self.sentinel.port}/{SERVICE}/0"

    def start(self, timeout: float = 20.0) -> SentinelSetup:
        self.master.start()
        self.replica = RedisServer(
            args=["--replicaof", HOST, str(self.master.port), "--repl-diskless-sync-delay", "0"],
        ).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the replica in sync before the Sentinel starts,
            # so the Sentinel's first INFO of the master already lists it
            if "master_link_status:up" in str(self.replica.command("INFO", "replication")):
                break
            time.sleep(0.02)
        self.sentinel = SentinelServer(self.master.port).start()
        while time.monotonic() < deadline:
            if resp_command(self.sentinel.port, "SENTINEL", "replicas", SERVICE):
                return self
            time.sleep(0.02)
        raise RuntimeError("the Sentinel setup did not become ready")

    def fail_over(self, timeout: float = 30.0) -> tuple[RedisServer, float]:
        """SIGKILL the master; wait until the Sentinel names the replica. Returns the new
        master and the seconds the Sentinel took to switch."""
        assert self.replica is not None
        assert self.sentinel is not None
        started = time.monotonic()
        self.master.kill()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.sentinel.master_port_now() == self.replica.port:
                return self.replica, time.monotonic() - started
            time.sleep(0.02)
        raise RuntimeError(f"no failover within {timeout} s:\n{self.sentinel.log_tail()}")

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()
                server.cleanup()
