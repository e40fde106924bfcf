"""Checked by mypy --strict (not run by pytest): the pagination API types as users see them."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator

import cacheward as cw

cursors = cw.CursorCodec(scope="config", arity=2)


def config_page(customer: str, cursor: str | None, limit: int) -> cw.Page[tuple[str, int]]:
    after: tuple[object, ...] | None = cursors.decode(cursor)
    rows = [("name", 1)] if after is None else []
    return cursors.page(rows, limit, key=lambda row: row)


async def aconfig_page(customer: str, cursor: str | None, limit: int) -> cw.Page[str]:
    return cw.Page([customer], None)


def sync_api() -> None:
    fetch = functools.partial(config_page, "c1")
    rows: list[tuple[str, int]] = cw.collect_pages(fetch, page_size=100, max_pages=50)
    pages: Iterator[cw.Page[tuple[str, int]]] = cw.iter_pages(fetch, deadline=30.0)
    first: cw.Page[tuple[str, int]] = next(pages)
    cursor: str | None = first.next_cursor
    store: cw.CheckpointStore = cw.MemoryCheckpoints(ttl=60)
    shared: cw.CheckpointStore = cw.LayerCheckpoints(cw.MemoryLayer(), ttl=60)
    again = cw.collect_pages(fetch, checkpoints=store, checkpoint_key="config:c1")
    token: str = cursors.encode(("name", 1))
    nothing: None = cursors.decode(None)
    try:
        cw.collect_pages(fetch, resume=False)
    except cw.PaginationError as exc:
        print(exc.cursor, exc.pages_done, exc.reason)
    except cw.CursorLoopError as exc:
        print(exc.cursor, exc.reason)
    except cw.InvalidCursor as exc:
        print(exc)
    print(rows, cursor, shared, again, token, nothing)


async def async_api() -> None:
    fetch = functools.partial(aconfig_page, "c1")
    names: list[str] = await cw.acollect_pages(fetch, page_size=100)
    pages: AsyncIterator[cw.Page[str]] = cw.aiter_pages(fetch)
    async for page in pages:
        print(page.items)
    print(names)
