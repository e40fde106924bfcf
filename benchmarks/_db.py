"""The incident's database: a real SQL database behind an honest, documented capacity model.

The data is real and the queries are real SQL: SQLite (a file in a temporary directory) by
default, PostgreSQL when ``DATABASE_URL`` is set. Each customer's configuration is
``rows_per_customer`` rows of ``config_items``, read page by page, either with OFFSET (what the
incident's rebuild did) or with a keyset cursor (``item_id > last seen``).

A laptop's SQLite answers these queries in microseconds and never overloads, so every statement
also passes through a capacity model with three documented parameters (:class:`Capacity`):

* ``slots`` — how many statements the database runs at full speed at once (its cores). With more
  statements active than slots, the slots are shared equally among them (processor sharing, as a
  CPU-bound database behaves): each statement progresses at ``slots / active`` of full speed.
* ``row_cost`` — the work of reading one row, in slot-seconds. An OFFSET query reads and throws
  away ``offset`` rows before returning ``limit`` rows, so it costs ``(offset + rows) * row_cost``;
  a keyset query costs ``rows * row_cost``. The real SQL's own time counts towards that work.
* ``statement_timeout`` — a statement still running this long after it started is cancelled with
  :class:`StatementTimeout` (PostgreSQL's ``statement_timeout``). The rows it read before the
  cancellation were read: they count as work done and wasted.

Nothing else is modelled (no queue in front of the slots, no contention collapse): overload shows
up as every statement slowing down together, statements hitting the timeout, and callers
erroring -- which is how a database with a statement timeout behaves. Every statement is counted
(start, duration, rows read, outcome) in the worker that ran it, and in shared counters that the
progress display reads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.sharedctypes
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OK",
    "TIMEOUT",
    "Capacity",
    "Database",
    "Dataset",
    "Meter",
    "StatementTimeout",
    "Store",
]

TABLE = "cacheward_bench_items"
OK = 0
TIMEOUT = 1
ERROR = 2


class StatementTimeout(Exception):
    """The capacity model cancelled a statement that ran past ``statement_timeout``."""


@dataclass(frozen=True)
class Capacity:
    """The database's capacity: see the module docstring for what each field means.

    The defaults describe a small database: 8 cores, 20 µs of work per row read (a wide
    configuration row, through an index), a 0.5 s statement timeout (an OLTP setting: web
    requests must not wait on long statements). Its capacity is therefore
    ``slots / row_cost`` = 400,000 rows per second.
    """

    slots: int = 8
    row_cost: float = 20e-6
    statement_timeout: float = 0.5
    #: how often a running statement re-reads the number of active statements (seconds)
    step: float = 0.02
    #: a slow-down nobody planned for (``--limiter adaptive``): from ``dip_at`` seconds after the
    #: run's start, for ``dip_for`` seconds, the database has ``dip_factor`` of its slots
    dip_at: float = 0.0
    dip_for: float = 0.0
    dip_factor: float = 1.0

    @property
    def rows_per_second(self) -> float:
        """The most rows the database can read per second, all slots busy."""
        return self.slots / self.row_cost

    def slots_at(self, elapsed: float) -> float:
        """The slots the database has ``elapsed`` seconds after the run's start."""
        if self.dip_for and self.dip_at <= elapsed < self.dip_at + self.dip_for:
            return self.slots * self.dip_factor
        return float(self.slots)


@dataclass(frozen=True)
class Dataset:
    """Many customers, each with a large configuration split into pages."""

    customers: int
    rows_per_customer: int
    page_size: int

    @property
    def pages(self) -> int:
        """Full pages per configuration."""
        return -(-self.rows_per_customer // self.page_size)

    @property
    def offset_rows_per_rebuild(self) -> int:
        """Rows an OFFSET rebuild reads, including the last, short or empty, page."""
        size, rows = self.page_size, self.rows_per_customer
        total, offset = 0, 0
        while True:
            got = max(0, min(size, rows - offset))
            total += offset + got
            if got < size:
                return total
            offset += size


# --------------------------------------------------------------------------------------------
# The main process: create the data, hand workers a description.
# --------------------------------------------------------------------------------------------


def _value(customer: int, item: int) -> str:
    seed = (customer * 7919 + item * 104729) % 1_000_003
    return f"{seed:07d}:" * 5


class Database:
    """Creates the table and its data; ``spec`` tells worker processes how to connect."""

    def __init__(self, dataset: Dataset, *, url: str | None = None) -> None:
        self.dataset = dataset
        self.url = url if url is not None else os.environ.get("DATABASE_URL") or None
        self.kind = "postgresql" if self.url else "sqlite"
        self._tmp: Path | None = None
        self.path: str | None = None
        #: A table of this run's own: runs sharing one PostgreSQL database (two checkouts, two
        #: CI jobs) must not drop each other's data mid-run.
        self.table = f"{TABLE}_{os.getpid()}_{os.urandom(3).hex()}"

    @property
    def spec(self) -> dict[str, Any]:
        """What a worker needs to connect (picklable)."""
        return {"kind": self.kind, "url": self.url, "path": self.path, "table": self.table}

    def describe(self) -> str:
        """One line for the report (never prints credentials)."""
        if self.kind == "sqlite":
            return f"SQLite {sqlite3.sqlite_version} (file in a temporary directory)"
        return "PostgreSQL (DATABASE_URL)"

    def create(self) -> None:
        """Create the table and fill it (dropping an older copy)."""
        ds = self.dataset
        rows = (
            (c, i, f"setting.{i:06d}", _value(c, i))
            for c in range(ds.customers)
            for i in range(1, ds.rows_per_customer + 1)
        )
        if self.kind == "sqlite":
            self._tmp = Path(tempfile.mkdtemp(prefix="cacheward-incident-"))
            self.path = str(self._tmp / "incident.sqlite3")
            conn = sqlite3.connect(self.path)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    f"CREATE TABLE {self.table} (customer_id INTEGER NOT NULL, item_id INTEGER "
                    "NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, "
                    "PRIMARY KEY (customer_id, item_id)) WITHOUT ROWID"
                )
                conn.executemany(f"INSERT INTO {self.table} VALUES (?, ?, ?, ?)", rows)
                conn.commit()
            finally:
                conn.close()
            return
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as pg:
            pg.execute(f"DROP TABLE IF EXISTS {self.table}")
            pg.execute(
                f"CREATE TABLE {self.table} (customer_id INTEGER NOT NULL, item_id INTEGER "
                "NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, "
                "PRIMARY KEY (customer_id, item_id))"
            )
            with pg.cursor() as cur, cur.copy(f"COPY {self.table} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            pg.execute(f"ANALYZE {self.table}")

    def drop(self) -> None:
        """Remove the data (the temporary SQLite file, or the PostgreSQL table)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        elif self.url:
            import psycopg

            with (
                contextlib.suppress(Exception),
                psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn,
            ):
                conn.execute(f"DROP TABLE IF EXISTS {self.table}")


class Meter:
    """Counters shared by every process of one stack's run (read live by the progress display)."""

    def __init__(self, ctx: Any) -> None:
        self.active: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("i", 0)
        self.queries: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("q", 0)
        self.rows: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("q", 0)
        self.timeouts: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("q", 0)
        self.requests: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("q", 0)
        self.errors: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("q", 0)

    @staticmethod
    def add(counter: multiprocessing.sharedctypes.Synchronized[int], n: int = 1) -> None:
        """Add ``n`` to a shared counter."""
        with counter.get_lock():
            counter.value += n


# --------------------------------------------------------------------------------------------
# A worker process: run statements through the capacity model and record each one.
# --------------------------------------------------------------------------------------------


class Store:
    """A worker's access to the database: one connection per thread, every statement metered.

    ``log`` collects one tuple per statement: ``(start, duration, rows_read, kind, outcome)``
    with ``start`` in wall-clock seconds (comparable across processes), ``kind`` ``"offset"`` or
    ``"keyset"`` and ``outcome`` :data:`OK`, :data:`TIMEOUT` or :data:`ERROR`.
    """

    def __init__(self, spec: dict[str, Any], capacity: Capacity, meter: Meter) -> None:
        self.spec = spec
        self.capacity = capacity
        self.meter = meter
        self._local = threading.local()
        self._opened: list[Any] = []  # every thread's connection, for close()
        #: The run's start (wall clock), for a capacity that changes over time.
        self.origin = 0.0
        self._log_lock = threading.Lock()
        self.log: list[tuple[float, float, int, str, int]] = []
        self._pg = spec["kind"] == "postgresql"
        mark = "%s" if self._pg else "?"
        table = spec.get("table", TABLE)
        self._offset_sql = (
            f"SELECT item_id, name, value FROM {table} WHERE customer_id = {mark} "
            f"ORDER BY item_id LIMIT {mark} OFFSET {mark}"
        )
        self._keyset_sql = (
            f"SELECT item_id, name, value FROM {table} WHERE customer_id = {mark} "
            f"AND item_id > {mark} ORDER BY item_id LIMIT {mark}"
        )

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._pg:
                import psycopg

                conn = psycopg.connect(self.spec["url"], autocommit=True, connect_timeout=10)
            else:
                conn = sqlite3.connect(f"file:{self.spec['path']}?mode=ro", uri=True)
            self._local.conn = conn
            with self._log_lock:
                self._opened.append(conn)
        return conn

    def offset_page(self, customer: int, offset: int, limit: int) -> list[tuple[int, str, str]]:
        """``LIMIT limit OFFSET offset``: reads ``offset + len(result)`` rows."""
        return self._run("offset", self._offset_sql, (customer, limit, offset), offset)

    def keyset_page(self, customer: int, after: int, limit: int) -> list[tuple[int, str, str]]:
        """``item_id > after LIMIT limit``: reads ``len(result)`` rows."""
        return self._run("keyset", self._keyset_sql, (customer, after, limit), 0)

    def _run(
        self, kind: str, sql: str, params: tuple[int, int, int], skipped: int
    ) -> list[tuple[int, str, str]]:
        cap = self.capacity
        meter = self.meter
        active = meter.active
        wall0 = time.time()
        start = time.monotonic()
        deadline = start + cap.statement_timeout
        Meter.add(active)
        outcome = ERROR
        work = done = 0.0
        try:
            rows: list[tuple[int, str, str]] = self._conn().execute(sql, params).fetchall()
            work = (skipped + len(rows)) * cap.row_cost
            done = min(work, time.monotonic() - start)
            while done < work:
                now = time.monotonic()
                if now >= deadline:
                    outcome = TIMEOUT
                    raise StatementTimeout(
                        f"canceling statement due to statement timeout "
                        f"({cap.statement_timeout:g} s, {kind} page)"
                    )
                slots = (
                    cap.slots_at(now - start + wall0 - self.origin) if cap.dip_for else cap.slots
                )
                share = min(1.0, slots / max(1, active.value))
                step = min((work - done) / share, cap.step, deadline - now)
                time.sleep(step)
                done += step * share
            outcome = OK
            return rows
        finally:
            Meter.add(active, -1)
            rows_read = round(done / cap.row_cost) if cap.row_cost else 0
            Meter.add(meter.queries)
            Meter.add(meter.rows, rows_read)
            if outcome == TIMEOUT:
                Meter.add(meter.timeouts)
            record = (wall0, time.monotonic() - start, rows_read, kind, outcome)
            with self._log_lock:
                self.log.append(record)

    def close(self) -> None:
        """Close every thread's connection (call it once those threads are done with it)."""
        with self._log_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def capacity_dict(capacity: Capacity) -> dict[str, float]:
    """The capacity model's parameters and derived capacity, for the JSON report."""
    out: dict[str, float] = dict(asdict(capacity))
    out["rows_per_second"] = capacity.rows_per_second
    return out
