"""Background writes in flight, by the layer they write to, so a layer can wait for them.

A thread's shared-layer writes run after its callers were answered (see ``cacheward._readpath``);
closing a layer right after a call would otherwise cut off the write that other processes wait
for. :func:`drain` lets :meth:`RedisLayer.close` wait for them, bounded.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["drain", "track"]

_PENDING: weakref.WeakKeyDictionary[Any, set[concurrent.futures.Future[Any]]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


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
