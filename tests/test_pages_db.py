"""Paginated rebuilds against a real database: SQLite always, PostgreSQL via ``DATABASE_URL``.

Every test runs a keyset query (``WHERE (name, id) > (?, ?) ORDER BY name, id LIMIT ?``) built
with :class:`cacheward.CursorCodec` and counts the rows the database returned, so "reads each
row once" and "re-reads at most the failed page" are measured, not assumed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward.testing import FakeClock, InlineExecutor

Row = tuple[str, int]


class Table:
    """A ``config(name, id)`` table on one backend, with a counting keyset page function."""

    def __init__(self, backend: str, conn: Any) -> None:
        self.backend = backend
        self.conn = conn
        self.lock = threading.Lock()
        self.mark = "?" if backend == "sqlite" else "%s"
        self.codec = cw.CursorCodec(scope="config", arity=2)
        self.rows_read = 0
        self.calls = 0
        self.fail_calls: set[int] = set()

    def load(self, names: list[str]) -> list[Row]:
        """Replace the table's rows; returns them in keyset order."""
        with self.lock:
            if self.backend == "sqlite":
                self.conn.execute("DELETE FROM config")
                self.conn.executemany(
                    "INSERT INTO config (id, name) VALUES (?, ?)", list(enumerate(names, 1))
                )
                self.conn.commit()
            else:
                self.conn.execute("TRUNCATE config")
                with self.conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO config (id, name) VALUES (%s, %s)", list(enumerate(names, 1))
                    )
            self.rows_read = 0
            self.calls = 0
            self.fail_calls = set()
            return self.query("SELECT name, id FROM config ORDER BY name, id", ())

    def query(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        rows = self.conn.execute(sql, params).fetchall()
        return [(name, ident) for name, ident in rows]

    def page(self, cursor: str | None, limit: int, *, lookahead: bool = False) -> cw.Page[Row]:
        """The keyset page; a call listed in ``fail_calls`` reads its rows, then fails."""
        after = self.codec.decode(cursor)
        m = self.mark
        fetch = limit + 1 if lookahead else limit
        with self.lock:
            self.calls += 1
            if after is None:
                sql = f"SELECT name, id FROM config ORDER BY name, id LIMIT {m}"  # noqa: S608
                rows = self.query(sql, (fetch,))
            else:
                sql = (
                    f"SELECT name, id FROM config WHERE (name, id) > ({m}, {m}) "  # noqa: S608
                    f"ORDER BY name, id LIMIT {m}"
                )
                rows = self.query(sql, (*after, fetch))
            self.rows_read += len(rows)
            if self.calls in self.fail_calls:
                raise ConnectionError(f"injected failure after reading page call {self.calls}")
        return self.codec.page(rows, limit, key=lambda row: row, lookahead=lookahead)


# Page functions at module level, bound with functools.partial, so the rebuild's identity is
# "this function, on this table": the way the guide tells users to write them.
_TABLES: dict[str, Table] = {}


def keyset_page(table: str, cursor: str | None, limit: int) -> cw.Page[Row]:
    return _TABLES[table].page(cursor, limit)


def lookahead_page(table: str, cursor: str | None, limit: int) -> cw.Page[Row]:
    return _TABLES[table].page(cursor, limit, lookahead=True)


async def akeyset_page(table: str, cursor: str | None, limit: int) -> cw.Page[Row]:
    return _TABLES[table].page(cursor, limit)


@pytest.fixture(scope="module")
def sqlite_table() -> Iterator[Table]:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE config (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.execute("CREATE INDEX config_keyset ON config (name, id)")
    _TABLES["sqlite"] = Table("sqlite", conn)
    yield _TABLES["sqlite"]
    conn.close()


@pytest.fixture(scope="module")
def postgres_table(database_url: str) -> Iterator[Table]:
    import psycopg

    conn = psycopg.connect(database_url, autocommit=True, connect_timeout=5)
    conn.execute("SET statement_timeout = '10s'")
    # A temporary table: private to this connection, gone when it closes.
    # Byte order, like SQLite's default, so both backends sort the generated names alike.
    conn.execute(
        'CREATE TEMP TABLE config (id integer PRIMARY KEY, name text COLLATE "C" NOT NULL)'
    )
    conn.execute("CREATE INDEX ON config (name, id)")
    _TABLES["postgres"] = Table("postgres", conn)
    yield _TABLES["postgres"]
    conn.close()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def table(request: pytest.FixtureRequest) -> Table:
    fixture = "sqlite_table" if request.param == "sqlite" else "postgres_table"
    result: Table = request.getfixturevalue(fixture)
    return result


def rebuild(
    fetch: Any, attempts: int, **kwargs: Any
) -> tuple[list[Row] | None, list[cw.PaginationError]]:
    """Call collect_pages until it succeeds, at most ``attempts`` times; returns its errors."""
    errors: list[cw.PaginationError] = []
    for _ in range(attempts):
        try:
            return cw.collect_pages(fetch, **kwargs), errors
        except cw.PaginationError as exc:  # noqa: PERF203 - each failure is one rebuild
            errors.append(exc)
    return None, errors


NAMES = [f"setting-{(i * 7919) % 97:02d}" for i in range(1_037)]  # many duplicate names


def test_a_full_keyset_rebuild_reads_each_row_once(table: Table) -> None:
    expected = table.load(NAMES)
    store = cw.MemoryCheckpoints()
    items = cw.collect_pages(
        functools.partial(keyset_page, table.backend), page_size=100, checkpoints=store
    )
    assert items == expected
    assert table.rows_read == len(expected)
    assert table.calls == 11  # 10 full pages and the short last one
    # With LIMIT limit + 1 the look-ahead row is read again on the next page: one per page.
    table.load(NAMES)
    items = cw.collect_pages(functools.partial(lookahead_page, table.backend), page_size=100)
    assert items == expected
    assert table.rows_read == len(expected) + 10


def test_injected_failures_reread_at_most_the_failed_page(table: Table) -> None:
    expected = table.load(NAMES)
    table.fail_calls = {3, 7, 8}
    store = cw.MemoryCheckpoints()
    fetch = functools.partial(keyset_page, table.backend)
    items, errors = rebuild(fetch, 4, page_size=100, checkpoints=store)
    assert len(errors) == 3
    assert all(isinstance(e.__cause__, ConnectionError) for e in errors)
    assert items == expected
    # Each failure read one page (100 rows) that had to be read again; nothing else was re-read.
    assert table.rows_read == len(expected) + 3 * 100
    assert table.calls == 11 + 3


def test_async_rebuild_with_failures_reads_the_same_rows(table: Table) -> None:
    import asyncio

    expected = table.load(NAMES)
    table.fail_calls = {2, 5}
    store = cw.MemoryCheckpoints()
    fetch = functools.partial(akeyset_page, table.backend)

    async def arebuild() -> list[Row]:
        for _ in range(3):
            try:
                return await cw.acollect_pages(fetch, page_size=100, checkpoints=store)
            except cw.PaginationError:  # noqa: PERF203 - each failure is one rebuild
                continue
        raise AssertionError("three attempts must be enough for two failures")

    assert asyncio.run(arebuild()) == expected
    assert table.rows_read == len(expected) + 2 * 100


def cursor_ignored_page(table_name: str, cursor: str | None, limit: int) -> cw.Page[Row]:
    """Forgets to pass the cursor to the query: every call returns the first page again."""
    return _TABLES[table_name].page(None, limit)


def inclusive_page(table_name: str, cursor: str | None, limit: int) -> cw.Page[Row]:
    """Compares with ``>=`` on a non-unique key: a run of duplicates longer than a page loops."""
    table = _TABLES[table_name]
    m = table.mark
    with table.lock:
        table.calls += 1
        if cursor is None:
            sql = f"SELECT name, id FROM config ORDER BY name LIMIT {m}"  # noqa: S608
            rows = table.query(sql, (limit,))
        else:
            sql = f"SELECT name, id FROM config WHERE name >= {m} ORDER BY name, id LIMIT {m}"  # noqa: S608
            rows = table.query(sql, (cursor, limit))
        table.rows_read += len(rows)
    return cw.Page(rows, rows[-1][0] if len(rows) == limit else None)


def test_cursor_loops_terminate_with_cursor_loop_error(table: Table) -> None:
    table.load(NAMES)
    store = cw.MemoryCheckpoints()
    with pytest.raises(cw.CursorLoopError) as info:
        cw.collect_pages(
            functools.partial(cursor_ignored_page, table.backend), page_size=100, checkpoints=store
        )
    assert info.value.reason == "no-progress"
    assert table.calls == 2
    assert len(store) == 0

    table.load(["same-name"] * 50 + ["z"])
    with pytest.raises(cw.CursorLoopError) as info:
        cw.collect_pages(
            functools.partial(inclusive_page, table.backend), page_size=10, checkpoints=store
        )
    assert info.value.reason in ("repeated-cursor", "no-progress")
    assert table.calls <= 3


# --- the property: any table, any page size, any failure points --------------------------------


class DroppingStore(cw.MemoryCheckpoints):
    """A broken checkpoint store: it loses the last page's items but keeps its cursor."""

    def save(self, key: str, checkpoint: cw.Checkpoint) -> None:
        pages = list(checkpoint.pages)
        pages[-1] = ([], pages[-1][1])
        super().save(
            key,
            cw.Checkpoint(pages, saved_at=checkpoint.saved_at, expires_at=checkpoint.expires_at),
        )


def check_rebuild(
    table: Table,
    names: list[str],
    page_size: int,
    fail_calls: set[int],
    *,
    resume: bool = True,
    store: cw.MemoryCheckpoints | None = None,
) -> None:
    expected = table.load(names)
    table.fail_calls = set(fail_calls)
    store = cw.MemoryCheckpoints() if store is None else store
    fetch = functools.partial(keyset_page, table.backend)
    items, errors = rebuild(
        fetch, len(fail_calls) + 1, page_size=page_size, checkpoints=store, resume=resume
    )
    assert items is not None, "more attempts than injected failures"
    assert all(e.reason == "page-failed" for e in errors)
    assert items == expected, "collected items differ from the table"
    assert len({ident for _, ident in items}) == len(items), "duplicates"
    failures = len(errors)
    assert table.rows_read <= len(expected) + failures * page_size, (
        f"read {table.rows_read} rows for a {len(expected)}-row table with {failures} failures "
        f"of pages of {page_size}"
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], int, set[int]]:
    """A table (with duplicate sort values), a page size, and the page calls that fail."""
    names = draw(st.lists(st.sampled_from(["a", "b", "bb", "c", "é", "Z"]), max_size=200))
    page_size = draw(st.integers(1, 8) | st.integers(1, 60))
    calls = len(names) // page_size + 1
    fail_calls = draw(st.sets(st.integers(1, calls + 4), max_size=4))
    return names, page_size, fail_calls


@given(scenarios())
def test_property_rebuild_equals_the_table_in_order_and_reads_little(
    table: Table, scenario: tuple[list[str], int, set[int]]
) -> None:
    check_rebuild(table, *scenario)


def test_property_search_catches_restarting_instead_of_resuming(sqlite_table: Table) -> None:
    @settings(max_examples=300, database=None, derandomize=True, phases=[Phase.generate])
    @given(scenarios())
    def broken(scenario: tuple[list[str], int, set[int]]) -> None:
        check_rebuild(sqlite_table, *scenario, resume=False)

    with pytest.raises(AssertionError, match=r"read \d+ rows"):
        broken()


def test_property_search_catches_a_checkpoint_that_loses_a_page(sqlite_table: Table) -> None:
    @settings(max_examples=300, database=None, derandomize=True, phases=[Phase.generate])
    @given(scenarios())
    def broken(scenario: tuple[list[str], int, set[int]]) -> None:
        check_rebuild(sqlite_table, *scenario, store=DroppingStore())

    with pytest.raises(AssertionError, match="differ"):
        broken()


# --- with the cache: the paginated rebuild as a cached key's fetch function -----------------------


def cached_config(table: Table, **kwargs: Any) -> Any:
    @cw.cached(**kwargs)
    def config(name: str) -> list[Row]:
        return cw.collect_pages(functools.partial(keyset_page, name), page_size=100)

    return config


def test_the_payload_is_cached_as_one_entry(table: Table) -> None:
    expected = table.load(NAMES)
    layer = cw.MemoryLayer()
    config = cached_config(table, ttl=60, layers=[layer], clock=FakeClock())
    for _ in range(5):
        assert config(table.backend) == expected
    assert len(layer) == 1
    assert table.rows_read == len(expected)
    stats = config.stats()
    assert (stats.fetches, stats.hits) == (1, 4)


def test_concurrent_misses_coalesce_into_one_rebuild(table: Table) -> None:
    expected = table.load(NAMES)
    config = cached_config(table, ttl=60, timeout=30)
    start = threading.Barrier(16)

    def call() -> list[Row]:
        start.wait(timeout=10)
        result: list[Row] = config(table.backend)
        return result

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: call(), range(16)))
    assert all(r == expected for r in results)
    assert table.rows_read == len(expected)  # one rebuild for 16 callers
    assert config.stats().fetches == 1


def test_a_stale_payload_is_served_while_it_rebuilds(table: Table) -> None:
    expected = table.load(NAMES)
    clock = FakeClock()
    refresher = concurrent.futures.ThreadPoolExecutor(1)
    config = cached_config(
        table, ttl=10, stale_ttl=600, clock=clock, refresh_executor=refresher, jitter=0
    )
    assert config(table.backend) == expected
    first_read = table.rows_read

    # The next rebuild blocks on its first page until released.
    gate = threading.Event()
    entered = threading.Event()
    original = table.page

    def held(cursor: str | None, limit: int, *, lookahead: bool = False) -> cw.Page[Row]:
        entered.set()
        assert gate.wait(timeout=10)
        return original(cursor, limit, lookahead=lookahead)

    table.page = held  # type: ignore[method-assign]
    try:
        clock.advance(11)
        for _ in range(5):
            assert config(table.backend) == expected  # stale, served at once
        assert entered.wait(timeout=10)
        assert table.rows_read == first_read  # the rebuild has not read a row yet
        gate.set()
    finally:
        refresher.shutdown(wait=True)
        table.page = original  # type: ignore[method-assign]
    assert table.rows_read == 2 * len(expected)  # exactly one background rebuild
    stats = config.stats()
    assert (stats.stale_hits, stats.refreshes) == (5, 1)


def test_a_failed_rebuild_under_the_cache_resumes_on_the_next_fetch(table: Table) -> None:
    expected = table.load(NAMES)
    clock = FakeClock()
    config = cached_config(
        table,
        ttl=10,
        stale_ttl=600,
        clock=clock,
        refresh_executor=InlineExecutor(),
        jitter=0,
        backoff=1.0,
    )
    assert config(table.backend) == expected
    table.rows_read = 0
    table.calls = 0
    table.fail_calls = {6}  # the refresh fails on its 6th page
    clock.advance(11)
    assert config(table.backend) == expected  # stale; the inline refresh failed part-way
    assert table.rows_read == 600
    clock.advance(5)  # past the key's back-off: the next call refreshes again and resumes
    assert config(table.backend) == expected
    assert config(table.backend) == expected
    # 5 kept pages + the failed page again + the rest: one page re-read, not the whole table.
    assert table.rows_read == len(expected) + 100
    assert config.stats().fetch_errors == 1


# --- the benchmark's shape (tiny mode; its speed is never asserted) ----------------------------


def test_pages_benchmark_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import pages

    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    figures: dict[str, Any] = pages.run(quick=True)
    rows = figures["rows"]
    table = figures["settings"]["rows"]
    page = figures["settings"]["page_size"]
    ours = rows[pages.OURS]
    # keyset + resume: the table, the 3 failed pages again (with their look-ahead rows), and
    # one look-ahead row for every page but the last
    assert ours["queries"] == table // page + 3
    assert ours["rows_returned"] == table + 3 * (page + 1) + (table // page - 1)
    assert ours["rows_walked"] == ours["rows_returned"]
    assert rows[pages.BASELINE]["rows_returned"] > 2 * table
    assert rows[pages.BASELINE]["rows_walked"] > 10 * table
    assert figures["targets"]["keyset_resume_rows_x_table"]["met"] in (True, False)


def test_concurrent_async_misses_coalesce_into_one_rebuild(table: Table) -> None:
    import asyncio

    expected = table.load(NAMES)

    @cw.cached(ttl=60, timeout=30)
    async def config(name: str) -> list[Row]:
        return await cw.acollect_pages(functools.partial(akeyset_page, name), page_size=100)

    async def main() -> list[list[Row]]:
        return await asyncio.gather(*(config(table.backend) for _ in range(200)))

    results = asyncio.run(main())
    assert all(r == expected for r in results)
    assert table.rows_read == len(expected)  # one rebuild for 200 tasks
    assert config.stats().fetches == 1
