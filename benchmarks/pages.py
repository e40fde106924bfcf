"""Rebuilding a large payload: OFFSET restarted on failure vs keyset with resume.

A 100,000-row configuration table (SQLite in a temporary directory by default; PostgreSQL when
``DATABASE_URL`` is set) is read in pages of 500, ordered by ``(name, id)`` with an index on
it. Three failures are injected at the same places for every contender: the first page call
that starts at or past 25 %, 50 % and 75 % of the table fails *after* its rows were read (the
worst case: a connection lost while the result travels). Each contender rebuilds until it has
the whole payload, and we count

* **rows returned**: rows the database sent back to the application;
* **rows walked**: rows the database had to step over to answer: for ``OFFSET n LIMIT k`` that
  is ``n + k`` (the skipped rows are read and thrown away, which is what made the incident's
  rebuild quadratic), for a keyset query the rows it returned;
* **wall time**: the median over interleaved rounds (the order rotates every round), and
  ``x ours``: the median over rounds of each round's ratio to keyset with resume.

Contenders:

* ``OFFSET, restart`` -- what the incident did: ``LIMIT 500 OFFSET n``, and a failed rebuild
  starts again from page one;
* ``OFFSET, resume`` -- cacheward's driver with an OFFSET cursor: resume alone;
* ``keyset, restart`` -- keyset queries, ``resume=False``: keyset alone;
* ``keyset, resume`` -- cacheward's recipe: keyset queries with ``LIMIT 501`` (a look-ahead
  row), ``cw.CursorCodec`` cursors, ``cw.collect_pages`` with resume.

Target: keyset with resume returns at most 1.05x the table's rows.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cacheward as cw
from benchmarks._harness import machine, median, print_table, smoke

TARGET = 1.05
FAILURE_POINTS = (0.25, 0.50, 0.75)


class Injected(ConnectionError):
    """The injected failure: a connection lost after the page's rows were read."""


class Db:
    """The table on one backend, with counters and the failure schedule."""

    def __init__(self, rows: int, page_size: int) -> None:
        self.rows = rows
        self.page_size = page_size
        self.url = os.environ.get("DATABASE_URL")
        self.backend = "postgresql" if self.url else "sqlite"
        self.tmp = tempfile.TemporaryDirectory(prefix="cacheward-bench-pages-")
        self.conn: Any
        self.mark = "%s" if self.url else "?"
        self._connect_and_load()
        self.codec = cw.CursorCodec(scope="bench", arity=2)
        self.reset()

    def _connect_and_load(self) -> None:
        data = [
            (i + 1, f"customer-{i % 40:02d}", f"key-{(i * 7919) % 5000:05d}", "v" * 60)
            for i in range(self.rows)
        ]
        if self.url is None:
            path = Path(self.tmp.name) / "config.sqlite3"
            self.conn = sqlite3.connect(path)
            self.conn.execute(
                "CREATE TABLE config (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                "name TEXT NOT NULL, value TEXT NOT NULL, pos INTEGER)"
            )
            self.conn.executemany(
                "INSERT INTO config (id, customer, name, value) VALUES (?, ?, ?, ?)", data
            )
            self.conn.execute("CREATE INDEX config_keyset ON config (name, id)")
            ordered = self.conn.execute("SELECT id FROM config ORDER BY name, id").fetchall()
            self.conn.executemany(
                "UPDATE config SET pos = ? WHERE id = ?", [(p, i) for p, (i,) in enumerate(ordered)]
            )
            self.conn.commit()
            self.conn.execute("ANALYZE")
        else:
            import psycopg

            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self.conn.execute(
                "CREATE TEMP TABLE config (id integer PRIMARY KEY, customer text NOT NULL, "
                'name text COLLATE "C" NOT NULL, value text NOT NULL, pos integer)'
            )
            with (
                self.conn.cursor() as cur,
                cur.copy("COPY config (id, customer, name, value) FROM STDIN") as copy,
            ):
                for row in data:
                    copy.write_row(row)
            self.conn.execute("CREATE INDEX ON config (name, id)")
            self.conn.execute(
                "UPDATE config SET pos = o.p FROM (SELECT id, row_number() OVER "
                "(ORDER BY name, id) - 1 AS p FROM config) o WHERE config.id = o.id"
            )
            self.conn.execute("VACUUM ANALYZE config")

    def reset(self) -> None:
        self.returned = 0
        self.walked = 0
        self.queries = 0
        self.thresholds = [int(f * self.rows) for f in FAILURE_POINTS]

    def _run(self, sql: str, params: tuple[Any, ...], skipped: int) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.conn.execute(sql, params).fetchall()
        self.queries += 1
        self.returned += len(rows)
        self.walked += skipped + len(rows)
        if rows and self.thresholds and rows[0][-1] >= self.thresholds[0]:
            self.thresholds.pop(0)
            raise Injected(f"connection lost after reading the page at row {rows[0][-1]}")
        return rows

    def offset_page(self, offset: int, limit: int) -> list[tuple[Any, ...]]:
        m = self.mark
        sql = f"SELECT name, id, value, pos FROM config ORDER BY name, id LIMIT {m} OFFSET {m}"
        return self._run(sql, (limit, offset), offset)

    def keyset_page(self, after: tuple[Any, ...] | None, limit: int) -> list[tuple[Any, ...]]:
        m = self.mark
        if after is None:
            sql = f"SELECT name, id, value, pos FROM config ORDER BY name, id LIMIT {m}"
            return self._run(sql, (limit,), 0)
        sql = (
            f"SELECT name, id, value, pos FROM config WHERE (name, id) > ({m}, {m}) "
            f"ORDER BY name, id LIMIT {m}"
        )
        return self._run(sql, (*after, limit), 0)

    def close(self) -> None:
        self.conn.close()
        self.tmp.cleanup()


_DB: dict[str, Db] = {}


# The page functions live at module level and take the database's name through
# functools.partial: the rebuild identity the guide recommends.
def keyset_page(db: str, cursor: str | None, limit: int) -> cw.Page[tuple[Any, ...]]:
    d = _DB[db]
    rows = d.keyset_page(d.codec.decode(cursor), limit + 1)
    return d.codec.page(rows, limit, key=lambda row: (row[0], row[1]))


def offset_cursor_page(db: str, cursor: str | None, limit: int) -> cw.Page[tuple[Any, ...]]:
    offset = int(cursor or 0)
    rows = _DB[db].offset_page(offset, limit)
    return cw.Page(rows, str(offset + limit) if len(rows) == limit else None)


def naive_offset_rebuild(db: Db) -> list[tuple[Any, ...]]:
    """The incident's rebuild: OFFSET pages, and a failure starts the whole rebuild again."""
    for _ in range(len(FAILURE_POINTS) + 1):
        items: list[tuple[Any, ...]] = []
        offset = 0
        try:
            while True:
                rows = db.offset_page(offset, db.page_size)
                items.extend(rows)
                if len(rows) < db.page_size:
                    return items
                offset += db.page_size
        except Injected:
            continue
    raise AssertionError("more failures than injected")


def driver_rebuild(page: Callable[..., Any], *, resume: bool) -> Callable[[Db], list[Any]]:
    def rebuild(db: Db) -> list[Any]:
        store = cw.MemoryCheckpoints()
        fetch = functools.partial(page, "db")
        for _ in range(len(FAILURE_POINTS) + 1):
            try:
                return cw.collect_pages(
                    fetch, page_size=db.page_size, checkpoints=store, resume=resume, deadline=None
                )
            except cw.PaginationError as exc:  # noqa: PERF203 - each failure is one rebuild
                if not isinstance(exc.__cause__, Injected):
                    raise
        raise AssertionError("more failures than injected")

    return rebuild


CONTENDERS: dict[str, Callable[[Db], list[Any]]] = {
    "OFFSET, restart (the incident)": naive_offset_rebuild,
    "OFFSET, resume": driver_rebuild(offset_cursor_page, resume=True),
    "keyset, restart": driver_rebuild(keyset_page, resume=False),
    "keyset, resume (cacheward)": driver_rebuild(keyset_page, resume=True),
}
OURS = "keyset, resume (cacheward)"
BASELINE = "OFFSET, restart (the incident)"


def run(*, quick: bool) -> dict[str, object]:
    """Run every contender for some interleaved rounds; print the report; return the figures."""
    rows, page_size = (2_000, 50) if smoke() else (100_000, 500)
    rounds = 1 if smoke() else (2 if quick else 5)
    started = time.perf_counter()
    db = Db(rows, page_size)
    _DB["db"] = db
    load_s = time.perf_counter() - started
    print(
        f"{db.backend}: {rows:,} rows, pages of {page_size}, failures at "
        f"{', '.join(f'{p:.0%}' for p in FAILURE_POINTS)} of the table, {rounds} rounds "
        f"(table built in {load_s:.1f} s)",
        flush=True,
    )
    expected = [
        r[:3] for r in db.conn.execute("SELECT name, id, value FROM config ORDER BY name, id")
    ]
    figures: dict[str, dict[str, Any]] = {
        name: {"wall_s": [], "rows_returned": [], "rows_walked": [], "queries": []}
        for name in CONTENDERS
    }
    names = list(CONTENDERS)
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                db.reset()
                t0 = time.perf_counter()
                items = CONTENDERS[name](db)
                wall = time.perf_counter() - t0
                if [tuple(i[:3]) for i in items] != expected:
                    raise AssertionError(f"{name} did not rebuild the table exactly")
                if db.thresholds:
                    raise AssertionError(f"{name}: not every failure was injected")
                f = figures[name]
                f["wall_s"].append(wall)
                f["rows_returned"].append(db.returned)
                f["rows_walked"].append(db.walked)
                f["queries"].append(db.queries)
                print(f"  round {r + 1}/{rounds}: {name}: {wall:.2f} s", flush=True)
    finally:
        db.close()
        _DB.pop("db", None)

    ours_walls = figures[OURS]["wall_s"]
    table_rows = []
    results: dict[str, Any] = {}
    for name, f in figures.items():
        returned = f["rows_returned"][0]
        walked = f["rows_walked"][0]
        wall = median(f["wall_s"])
        # each round's ratio to ours in the same round, then the median: drift cancels out
        ratio = median(a / b for a, b in zip(f["wall_s"], ours_walls, strict=True))
        results[name] = {
            "rows_returned": returned,
            "rows_returned_x_table": returned / rows,
            "rows_walked": walked,
            "rows_walked_x_table": walked / rows,
            "queries": f["queries"][0],
            "wall_s_median": wall,
            "wall_x_ours": ratio,
            "raw": f,
        }
        table_rows.append(
            [
                name,
                f"{returned:,}",
                f"{returned / rows:.3f}x",
                f"{walked:,}",
                f"{walked / rows:.2f}x",
                f"{f['queries'][0]:,}",
                f"{wall:.3f}",
                f"{ratio:.1f}x",
            ]
        )
    print_table(
        f"Rebuild of a {rows:,}-row table on {db.backend}, pages of {page_size}, "
        f"{len(FAILURE_POINTS)} injected failures (median of {rounds} rounds)",
        [
            "contender",
            "rows returned",
            "x table",
            "rows walked",
            "x table",
            "queries",
            "wall s",
            "x ours",
        ],
        table_rows,
    )
    ours = results[OURS]["rows_returned_x_table"]
    baseline = results[BASELINE]["rows_returned_x_table"]
    met = ours <= TARGET
    print(
        f"\ntarget: keyset with resume returns <= {TARGET}x the table's rows: "
        f"{ours:.3f}x -> {'MET' if met else 'MISSED'}; the OFFSET baseline returned "
        f"{baseline:.2f}x and walked {results[BASELINE]['rows_walked_x_table']:.1f}x"
    )
    return {
        "machine": machine(),
        "backend": db.backend,
        "settings": {
            "rows": rows,
            "page_size": page_size,
            "rounds": rounds,
            "failure_points": list(FAILURE_POINTS),
            "table_build_s": load_s,
        },
        "rows": results,
        "targets": {
            "keyset_resume_rows_x_table": {"value": ours, "target": TARGET, "met": met},
            "offset_restart_rows_x_table": baseline,
        },
    }
