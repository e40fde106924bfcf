"""What a child made by ``os.fork()`` must not inherit from its parent's threads.

``fork()`` copies the whole memory of the process but only the thread that called it. Anything
another thread was doing at that moment is frozen in the child for ever: a fetch in flight
(its callers would wait for a leader that does not exist), a lock held (the child's first
caller would block on it), a thread pool whose workers are gone (its jobs would queue for
ever), a subscriber thread that no longer listens, a count of calls in progress that will
never end. And some identities must differ between the two processes: the lease owner id of a
Redis layer (the child would take its parent's lease as its own) and a backplane origin (the
parent would ignore the child's invalidations as its own echo).

One handler, registered with ``os.register_at_fork(after_in_child=...)``, puts all of it back:

- every lock made by :func:`lock` is re-initialised (``logging`` does the same for its
  handlers' locks);
- every object given to :func:`register` has its ``after_fork()`` called (flights forgotten,
  pools and threads restarted on first use, identities redrawn);
- every function given to :func:`at_fork` is called (module-level state).

The handler runs only in a child that goes on running Python (``multiprocessing``'s ``fork``
start method, a pre-forking server, a plain ``os.fork()``), not for ``subprocess``'s
fork-and-exec. Executors given by the user (``refresh_executor=``) are the user's to handle.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["ForkAware", "at_fork", "lock", "register", "rlock"]


class ForkAware(Protocol):
    def after_fork(self) -> None:
        """Called in the child, once, right after ``fork()``."""


_LOCKS: weakref.WeakSet[Any] = weakref.WeakSet()
_OBJECTS: weakref.WeakSet[Any] = weakref.WeakSet()
_HOOKS: list[Callable[[], None]] = []

F = TypeVar("F", bound=Callable[[], None])


def lock() -> threading.Lock:
    """A ``threading.Lock`` that is released in a forked child (whoever held it is gone)."""
    made = threading.Lock()
    _LOCKS.add(made)
    return made


def rlock() -> threading.RLock:
    """A ``threading.RLock`` that is released in a forked child."""
    made = threading.RLock()
    _LOCKS.add(made)
    return made


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every forked child while ``obj`` lives."""
    _OBJECTS.add(obj)


def at_fork(fn: F) -> F:
    """Call ``fn()`` in every forked child (module-level state; a decorator)."""
    _HOOKS.append(fn)
    return fn


def _after_fork_in_child() -> None:
    for made in list(_LOCKS):
        made._at_fork_reinit()
    # Each reset on its own: one that fails (logged) must not leave the others undone.
    for hook in [*_HOOKS, *(obj.after_fork for obj in list(_OBJECTS))]:
        try:
            hook()
        except Exception:  # noqa: PERF203 - once per fork
            logging.getLogger("cacheward").exception("cacheward: a reset after fork() failed")


if hasattr(os, "register_at_fork"):  # not on Windows (which has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
