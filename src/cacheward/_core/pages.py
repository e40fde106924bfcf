"""Cursor pagination decisions: progress, loops, bounds and checkpoints, with ``now`` passed in.

One :class:`Rebuild` follows one paginated rebuild: what to do before each page
(:meth:`Rebuild.before_page`), what a page that arrived means (:meth:`Rebuild.page_arrived`) or
that the page function raised (:meth:`Rebuild.page_failed`). :func:`rebuild_steps` is the whole
rebuild written once, as a plan: a generator that yields typed requests -- read the monotonic
clock, load / save / discard the checkpoint, fetch a page, hand a page out -- and receives their
answers. The drivers in ``cacheward._pages`` (one plain, one ``async``) only perform the
requests; neither holds a decision. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from cacheward._errors import CacheWardError, CursorLoopError, PaginationError

__all__ = [
    "MONOTONIC",
    "Checkpoint",
    "CheckpointAction",
    "DiscardCheckpoint",
    "Emit",
    "Failed",
    "FetchPage",
    "LoadCheckpoint",
    "Monotonic",
    "PageLike",
    "Rebuild",
    "Request",
    "SaveCheckpoint",
    "Stop",
    "Verdict",
    "checkpoint_from_value",
    "checkpoint_to_value",
    "rebuild_steps",
]

#: A page as remembered: its items and the cursor it pointed to next.
PageRecord = tuple[list[Any], "str | None"]


class Checkpoint:
    """The pages of a rebuild that stopped part-way, kept so the next rebuild resumes.

    Attributes:
        pages: every page fetched so far, in order: ``(items, next_cursor)``; the last page's
            ``next_cursor`` is where the next rebuild resumes.
        saved_at: wall-clock time of the save (seconds since the epoch).
        expires_at: wall-clock time after which the checkpoint is ignored.
    """

    __slots__ = ("expires_at", "pages", "saved_at")

    def __init__(self, pages: Sequence[PageRecord], *, saved_at: float, expires_at: float) -> None:
        self.pages: tuple[PageRecord, ...] = tuple(pages)
        self.saved_at = saved_at
        self.expires_at = expires_at

    @property
    def cursor(self) -> str | None:
        """The cursor the next rebuild resumes from."""
        return self.pages[-1][1] if self.pages else None

    def alive(self, now: float) -> bool:
        """Whether the checkpoint may still be resumed from at wall-clock ``now``."""
        return now < self.expires_at and bool(self.pages)

    def __repr__(self) -> str:
        items = sum(len(p[0]) for p in self.pages)
        return (
            f"Checkpoint(pages={len(self.pages)}, items={items}, cursor={self.cursor!r}, "
            f"saved_at={self.saved_at!r}, expires_at={self.expires_at!r})"
        )


_FORMAT = 1


def checkpoint_to_value(checkpoint: Checkpoint) -> dict[str, Any]:
    """A plain (JSON-able, if the items are) form of ``checkpoint``, for storing on a layer."""
    return {
        "cacheward-checkpoint": _FORMAT,
        "pages": [[list(items), cursor] for items, cursor in checkpoint.pages],
        "saved_at": checkpoint.saved_at,
        "expires_at": checkpoint.expires_at,
    }


def checkpoint_from_value(value: object) -> Checkpoint | None:
    """Read back :func:`checkpoint_to_value`'s form; anything malformed is ``None`` (a miss)."""
    if not isinstance(value, dict) or value.get("cacheward-checkpoint") != _FORMAT:
        return None
    pages = value.get("pages")
    saved_at = value.get("saved_at")
    expires_at = value.get("expires_at")
    if not isinstance(pages, list) or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) for t in (saved_at, expires_at)
    ):
        return None
    records: list[PageRecord] = []
    for page in pages:
        if not isinstance(page, (list, tuple)) or len(page) != 2:
            return None
        items, cursor = page
        if not isinstance(items, list) or not (cursor is None or isinstance(cursor, str)):
            return None
        records.append((items, cursor))
    # Only the last page may end the sequence; a None cursor earlier means a corrupt record.
    if any(cursor is None for _, cursor in records):
        return None
    return Checkpoint(records, saved_at=float(saved_at), expires_at=float(expires_at))  # type: ignore[arg-type]


class CheckpointAction(enum.Enum):
    """What the driver does with the checkpoint store."""

    NONE = "none"
    """Leave the store as it is."""
    SAVE = "save"
    """Save :meth:`Rebuild.checkpoint` (the pages so far)."""
    DISCARD = "discard"
    """Delete the checkpoint: the rebuild finished, or its pages must not be resumed."""


class Verdict(enum.Enum):
    """What the driver does with a page that arrived."""

    CONTINUE = "continue"
    """Hand the page out and fetch the next one."""
    FINISHED = "finished"
    """Hand the page out; it was the last."""


class Stop:
    """Why a rebuild stops early: the error to raise, its cause, and the checkpoint action."""

    __slots__ = ("action", "cause", "error")

    def __init__(
        self, error: CacheWardError, action: CheckpointAction, cause: BaseException | None = None
    ) -> None:
        self.error = error
        self.action = action
        self.cause = cause

    def __repr__(self) -> str:
        return f"Stop(error={self.error!r}, action={self.action.value!r}, cause={self.cause!r})"


class Rebuild:
    """The state of one paginated rebuild.

    Args:
        page_size: the ``limit`` passed to the page function.
        max_pages: the most pages the whole rebuild may have (restored pages included).
        max_items: the most items the whole rebuild may have (restored pages included).
        max_empty_pages: how many empty pages *in a row* may still carry a cursor; one more is a
            :class:`CursorLoopError` (``reason="empty-pages"``).
        deadline_at: monotonic time after which no new page is started (``None``: no deadline).
        checkpoint_every: also save the checkpoint after every this many new pages (``None``:
            only when the rebuild stops part-way).
        restored: the checkpoint this rebuild resumes from, if any.
        resumable: whether a checkpoint is kept at all.
        scope: which later rebuild resumes from the checkpoint, for the error messages.
    """

    __slots__ = (
        "checkpoint_every",
        "cursor",
        "deadline",
        "deadline_at",
        "empty_run",
        "fetched",
        "items_done",
        "max_empty_pages",
        "max_items",
        "max_pages",
        "page_size",
        "pages",
        "restored",
        "resumable",
        "saved",
        "scope",
        "seen",
        "stop",
        "unsaved",
    )

    def __init__(
        self,
        *,
        page_size: int,
        max_pages: int,
        max_items: int,
        max_empty_pages: int,
        deadline: float | None,
        deadline_at: float | None,
        checkpoint_every: int | None = None,
        restored: Checkpoint | None = None,
        resumable: bool = True,
        scope: str = "the same page function and arguments",
    ) -> None:
        self.resumable = resumable
        self.scope = scope
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_items = max_items
        self.max_empty_pages = max_empty_pages
        self.deadline = deadline
        self.deadline_at = deadline_at
        self.checkpoint_every = checkpoint_every
        #: Accepted pages, restored ones first.
        self.pages: list[PageRecord] = []
        self.seen: set[str] = set()
        self.items_done = 0
        self.empty_run = 0
        #: The cursor of the next page to fetch (``None`` before the first page).
        self.cursor: str | None = None
        #: How many pages came from the checkpoint.
        self.restored = 0
        #: How many pages this rebuild fetched itself.
        self.fetched = 0
        #: Pages fetched since the last save.
        self.unsaved = 0
        #: Whether this rebuild saved a checkpoint (so finishing must discard it).
        self.saved = False
        #: Why the rebuild stopped, once it has.
        self.stop: Stop | None = None
        if restored is not None:
            for items, cursor in restored.pages:
                self._accept(items, cursor)
            # The run of empty pages carries over: a resumed rebuild must not reset the count.
            self.restored = len(self.pages)

    def _accept(self, items: list[Any], next_cursor: str | None) -> None:
        self.pages.append((items, next_cursor))
        self.items_done += len(items)
        self.empty_run = self.empty_run + 1 if not items else 0
        if next_cursor is not None:
            self.seen.add(next_cursor)
        self.cursor = next_cursor

    @property
    def finished(self) -> bool:
        """Whether the last accepted page ended the sequence."""
        return bool(self.pages) and self.pages[-1][1] is None

    def checkpoint(self, *, now: float, ttl: float) -> Checkpoint:
        """The pages so far as a checkpoint saved at wall-clock ``now``, alive for ``ttl``."""
        self.saved = True
        self.unsaved = 0
        return Checkpoint(self.pages, saved_at=now, expires_at=now + ttl)

    def _stop_action(self) -> CheckpointAction:
        # Save only when this call made progress: re-saving a restored checkpoint unchanged
        # would extend its life although nothing moved.
        return CheckpointAction.SAVE if self.unsaved > 0 else CheckpointAction.NONE

    def _halt(self, stop: Stop) -> Stop:
        self.stop = stop
        return stop

    def before_page(self, mono: float) -> Stop | None:
        """Whether the next page may be fetched at monotonic time ``mono``; ``None`` means yes.

        Restored pages count against ``max_pages`` and ``max_items``; the deadline is this
        call's own.
        """
        if len(self.pages) >= self.max_pages:
            return self._halt(
                Stop(
                    PaginationError(
                        f"the rebuild reached max_pages={self.max_pages} and the page function "
                        f"still returned a cursor ({self.cursor!r}); the payload is larger than "
                        "allowed, so it is not returned truncated. Raise max_pages (or "
                        "page_size) if the payload is meant to be this large.",
                        cursor=self.cursor,
                        pages_done=len(self.pages),
                        reason="max-pages",
                    ),
                    self._stop_action(),
                )
            )
        if self.deadline_at is not None and mono >= self.deadline_at:
            return self._halt(
                Stop(
                    PaginationError(
                        f"the rebuild passed its deadline of {self.deadline:g} s after "
                        f"{len(self.pages)} pages ({self.fetched} fetched by this call) at cursor "
                        f"{self.cursor!r}. Raise deadline= if one call must finish the whole "
                        "payload.",
                        cursor=self.cursor,
                        pages_done=len(self.pages),
                        reason="deadline",
                    ),
                    self._stop_action(),
                )
            )
        return None

    def page_arrived(self, items: list[Any], next_cursor: str | None) -> Verdict | Stop:
        """Judge the page fetched at :attr:`cursor`: a :class:`Stop` means do not hand it out."""
        asked = self.cursor
        done = len(self.pages)
        if next_cursor is not None:
            if next_cursor == asked:
                return self._halt(
                    Stop(
                        CursorLoopError(
                            f"the page function returned the cursor it was given ({asked!r}) "
                            f"after {done} pages: the rebuild would never progress. Check that "
                            "the next cursor is built from the page's last row.",
                            cursor=asked,
                            pages_done=done,
                            reason="no-progress",
                        ),
                        CheckpointAction.DISCARD,
                    )
                )
            if next_cursor in self.seen:
                return self._halt(
                    Stop(
                        CursorLoopError(
                            f"the page function returned cursor {next_cursor!r}, seen before, "
                            f"after {done} pages: the cursors loop. Order the query by a "
                            "unique key (add the primary key as the last sort column).",
                            cursor=next_cursor,
                            pages_done=done,
                            reason="repeated-cursor",
                        ),
                        CheckpointAction.DISCARD,
                    )
                )
            if not items and self.empty_run >= self.max_empty_pages:
                return self._halt(
                    Stop(
                        CursorLoopError(
                            f"{self.empty_run + 1} empty pages in a row still returned a "
                            f"cursor (max_empty_pages={self.max_empty_pages}) after {done} "
                            "pages: the rebuild is not progressing. Raise max_empty_pages if "
                            "the source legitimately returns runs of empty pages.",
                            cursor=next_cursor,
                            pages_done=done,
                            reason="empty-pages",
                        ),
                        CheckpointAction.DISCARD,
                    )
                )
        if self.items_done + len(items) > self.max_items:
            return self._halt(
                Stop(
                    PaginationError(
                        f"page {done + 1} would bring the rebuild to "
                        f"{self.items_done + len(items)} items, over max_items={self.max_items}; "
                        "the payload is larger than allowed, so it is not returned truncated. "
                        "Raise max_items if the payload is meant to be this large.",
                        cursor=asked,
                        pages_done=done,
                        reason="max-items",
                    ),
                    self._stop_action(),
                )
            )
        self._accept(items, next_cursor)
        self.fetched += 1
        self.unsaved += 1
        return Verdict.FINISHED if next_cursor is None else Verdict.CONTINUE

    def save_due(self) -> bool:
        """Whether a periodic save (``checkpoint_every``) is due after the page just accepted."""
        every = self.checkpoint_every
        return every is not None and self.unsaved >= every and not self.finished

    def finish_action(self) -> CheckpointAction:
        """What to do with the store once the last page arrived."""
        return CheckpointAction.DISCARD if self.restored or self.saved else CheckpointAction.NONE

    def page_failed(self, error: BaseException) -> Stop:
        """The page function raised ``error`` while fetching the page at :attr:`cursor`."""
        done = len(self.pages)
        return self._halt(
            Stop(
                PaginationError(
                    f"page {done + 1} (cursor {self.cursor!r}) failed with "
                    f"{type(error).__name__}: {error}; "
                    + (
                        f"{done} pages are checkpointed and the next rebuild with {self.scope} "
                        "resumes from that cursor."
                        if self.resumable
                        else "resume=False, so the next rebuild starts over."
                    ),
                    cursor=self.cursor,
                    pages_done=done,
                    reason="page-failed",
                ),
                self._stop_action(),
                error,
            )
        )

    def items(self) -> list[Any]:
        """Every accepted item, in order."""
        out: list[Any] = []
        for items, _ in self.pages:
            out.extend(items)
        return out

    def __repr__(self) -> str:
        return (
            f"Rebuild(pages={len(self.pages)}, restored={self.restored}, fetched={self.fetched}, "
            f"items={self.items_done}, cursor={self.cursor!r})"
        )


# ---------------------------------------------------------------------------------------------
# The rebuild as a plan: typed requests, performed by the drivers.
# ---------------------------------------------------------------------------------------------


class PageLike(Protocol):
    """What the plan reads from a page: its items and the cursor of the next one."""

    @property
    def items(self) -> list[Any]: ...
    @property
    def next_cursor(self) -> str | None: ...


class Monotonic:
    """Read the monotonic clock; the answer is its value (seconds)."""

    __slots__ = ()


#: The one :class:`Monotonic` request (it carries nothing).
MONOTONIC = Monotonic()


class LoadCheckpoint:
    """Load this rebuild's checkpoint; the answer is a :class:`Checkpoint` or ``None``.

    The driver reads the wall clock for the store; a store that fails answers ``None``.
    """

    __slots__ = ()


class SaveCheckpoint:
    """Save :meth:`Rebuild.checkpoint` of ``rebuild`` (with wall-clock now and the store's TTL)."""

    __slots__ = ("rebuild",)

    def __init__(self, rebuild: Rebuild) -> None:
        self.rebuild = rebuild


class DiscardCheckpoint:
    """Delete this rebuild's checkpoint."""

    __slots__ = ()


class FetchPage:
    """Call the page function at ``cursor`` with ``limit``.

    The answer is the :class:`PageLike` it returned, or :class:`Failed` if it raised.
    """

    __slots__ = ("cursor", "limit")

    def __init__(self, cursor: str | None, limit: int) -> None:
        self.cursor = cursor
        self.limit = limit

    def __repr__(self) -> str:
        return f"FetchPage(cursor={self.cursor!r}, limit={self.limit})"


class Failed:
    """The answer to :class:`FetchPage` when the page function raised ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Emit:
    """Hand ``page`` to the caller (the sync driver yields it, the async one too)."""

    __slots__ = ("page",)

    def __init__(self, page: Any) -> None:
        self.page = page


Request = Monotonic | LoadCheckpoint | SaveCheckpoint | DiscardCheckpoint | FetchPage | Emit

_LOAD = LoadCheckpoint()
_DISCARD = DiscardCheckpoint()


def _settle(run: Rebuild, action: CheckpointAction) -> Generator[Request, Any, None]:
    if not run.resumable or action is CheckpointAction.NONE:
        return
    yield SaveCheckpoint(run) if action is CheckpointAction.SAVE else _DISCARD


def rebuild_steps(
    start: Callable[[Checkpoint | None, float], Rebuild],
    *,
    resumable: bool,
    page_size: int,
    make_page: Callable[[list[Any], str | None], Any],
) -> Generator[Request, Any, None]:
    """One whole rebuild, as the requests it needs; raises the rebuild's error when it stops.

    Args:
        start: makes the :class:`Rebuild` from the restored checkpoint and monotonic now.
        resumable: whether a checkpoint store is used at all (``resume=True``).
        page_size: the ``limit`` of every :class:`FetchPage`.
        make_page: builds the page handed out for each restored ``(items, next_cursor)``.

    Order (the drivers' contract): load the checkpoint; hand out the restored pages; then for
    each page: check the bounds, fetch, judge; a page that continues the sequence is saved first
    if a periodic save is due, then handed out; the last page settles the checkpoint, then is
    handed out; a stop settles the checkpoint, then raises.
    """
    restored = (yield _LOAD) if resumable else None
    run = start(restored, (yield MONOTONIC))
    for items, cursor in run.pages:
        yield Emit(make_page(items, cursor))
    if run.finished:  # a checkpoint never ends the sequence, but a custom store might lie
        return
    while True:
        stop = run.before_page((yield MONOTONIC))
        if stop is None:
            answer = yield FetchPage(run.cursor, page_size)
            if isinstance(answer, Failed):
                stop = run.page_failed(answer.error)
            else:
                verdict = run.page_arrived(answer.items, answer.next_cursor)
                if verdict is Verdict.CONTINUE:
                    if run.save_due():
                        yield from _settle(run, CheckpointAction.SAVE)
                    yield Emit(answer)
                    continue
                if verdict is Verdict.FINISHED:
                    yield from _settle(run, run.finish_action())
                    yield Emit(answer)
                    return
                stop = verdict
        yield from _settle(run, stop.action)
        raise stop.error from stop.cause
