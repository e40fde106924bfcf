"""Checked by mypy --strict (not run by pytest): the pagination API types as users see them."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator

import cacheguard as cg

cursors = cg.CursorCodec(scope="config", arity=2)


def config_page(customer: str, cursor: str | None, limit: int) -> cg.Page[tuple[str, int]]:
    after: tuple[object, ...] | None = cursors.decode(cursor)
    rows = [("name", 1)] if after is None else []
    return cursors.page(rows, limit, key=lambda row: row)


async def aconfig_page(customer: str, cursor: str | None, limit: int) -> cg.Page[str]:
    return cg.Page([customer], None)


def sync_api() -> None:
    fetch = functools.partial(config_page, "c1")
    rows: list[tuple[str, int]] = cg.collect_pages(fetch, page_size=100, max_pages=50)
    pages: Iterator[cg.Page[tuple[str, int]]] = cg.iter_pages(fetch, deadline=30.0)
    first: cg.Page[tuple[str, int]] = next(pages)
    cursor: str | None = first.next_cursor
    store: cg.CheckpointStore = cg.MemoryCheckpoints(ttl=60)
    shared: cg.CheckpointStore = cg.LayerCheckpoints(cg.MemoryLayer(), ttl=60)
    again = cg.collect_pages(fetch, checkpoints=store, checkpoint_key="config:c1")
    token: str = cursors.encode(("name", 1))
    nothing: None = cursors.decode(None)
    try:
        cg.collect_pages(fetch, resume=False)
    except cg.PaginationError as exc:
        print(exc.cursor, exc.pages_done, exc.reason)
    except cg.CursorLoopError as exc:
        print(exc.cursor, exc.reason)
    except cg.InvalidCursor as exc:
        print(exc)
    print(rows, cursor, shared, again, token, nothing)


async def async_api() -> None:
    fetch = functools.partial(aconfig_page, "c1")
    names: list[str] = await cg.acollect_pages(fetch, page_size=100)
    pages: AsyncIterator[cg.Page[str]] = cg.aiter_pages(fetch)
    async for page in pages:
        print(page.items)
    print(names)
