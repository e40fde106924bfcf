"""Background writes in flight, by the layer they write to, so a layer can wait for them.

A thread's shared-layer writes run after its callers were answered (see ``cacheward._readpath``);
closing a layer right after a call would otherwise cut off the write that other processes wait
for. :func:`drain` lets :meth:`RedisLayer.close` wait for them, bounded.
"""

from __future__ import annotations

import concurrent.futures
import functools
import weakref
from collections.abc import Iterable
from typing import Any

from cacheward import _forksafe

__all__ = ["adrain", "drain", "track", "track_task"]

_PENDING: weakref.WeakKeyDictionary[Any, set[concurrent.futures.Future[Any]]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = _forksafe.lock()


def track(owners: Iterable[Any], future: concurrent.futures.Future[Any]) -> None:
    """Remember ``future`` as a write to each of ``owners`` until it is done."""
    for owner in owners:
        with _LOCK:
            try:
                pending = _PENDING.setdefault(owner, set())
            except TypeError:  # not weak-referenceable: nobody can wait for it
                continue
            pending.add(future)
        future.add_done_callback(functools.partial(_forget, owner))


def _forget(owner: Any, future: concurrent.futures.Future[Any]) -> None:
    with _LOCK:
        pending = _PENDING.get(owner)
        if pending is not None:
            pending.discard(future)


def drain(owner: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the writes to ``owner`` in flight; whether all ended."""
    with _LOCK:
        pending = list(_PENDING.get(owner, ()))
    if not pending:
        return True
    _, not_done = concurrent.futures.wait(pending, timeout=timeout)
    return not not_done


_TASKS: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()


def track_task(owners: Iterable[Any], task: Any) -> None:
    """Remember ``task`` (an asyncio task writing to ``owners``) until it is done."""
    for owner in owners:
        with _LOCK:
            try:
                pending = _TASKS.setdefault(owner, set())
            except TypeError:
                continue
            pending.add(task)
        task.add_done_callback(functools.partial(_forget_task, owner))


def _forget_task(owner: Any, task: Any) -> None:
    with _LOCK:
        pending = _TASKS.get(owner)
        if pending is not None:
            pending.discard(task)


async def adrain(owner: Any, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for this loop's tasks still writing to ``owner``."""
    import asyncio

    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    with _LOCK:
        pending = [
            t
            for t in _TASKS.get(owner, ())
            if not t.done() and t is not current and t.get_loop() is loop
        ]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


@_forksafe.at_fork
def _forget_all() -> None:
    """In a forked child the parent's writes are not this process's to wait for."""
    _PENDING.clear()
    _TASKS.clear()
