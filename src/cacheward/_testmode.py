"""Test mode: switch caching (and optionally rate limits and retries) off, for a test or a call.

Two scopes, because tests need both:

- :func:`disabled` is process-wide: while any ``disabled()`` scope is open, every cached call in
  the process — in any thread, task, thread pool or background refresh — goes straight to the
  function. That is what a test of "my view without the cache" wants, whatever the view spawns.
- :func:`bypass` is context-local (a :mod:`contextvars` variable): only the current thread, or
  the current asyncio task and the tasks it creates, skip the caches. Other threads and tasks
  running at the same time keep caching.

Scopes nest and may overlap freely across threads (process-wide scopes are counted, not
flagged, so one thread leaving its scope never switches off another thread's). The check the
call paths make is one truthiness test of a module-level list (:data:`ACTIVE`), empty unless
some scope is open, so outside tests a fresh hit costs no measurable extra.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from cacheward import _forksafe
from cacheward._frozen import Frozen
from cacheward._lazy import iscoroutinefunction

__all__ = ["ACTIVE", "bypass", "bypassed", "disabled", "limits_off", "retries_off"]

P = ParamSpec("P")
R = TypeVar("R")


class _Mode(Frozen):
    caching: bool
    limits: bool
    retries: bool


#: Non-empty while any ``disabled()`` or ``bypass()`` scope is open anywhere in the process.
#: The call paths test it first (``if ACTIVE and bypassed(): ...``), so the common case —
#: no test mode — costs one list truthiness check.
ACTIVE: list[object] = []

_LOCK = _forksafe.lock()
#: The open process-wide scopes, innermost last.
_PROCESS: list[_Mode] = []
_CONTEXT: contextvars.ContextVar[tuple[_Mode, ...]] = contextvars.ContextVar(
    "cacheward_bypass", default=()
)


def _modes() -> tuple[_Mode, ...]:
    return (*_PROCESS, *_CONTEXT.get())


def bypassed() -> bool:
    """Whether a cached call made here and now must go straight to the function."""
    return any(mode.caching for mode in _modes())


def limits_off() -> bool:
    """Whether rate limits and the backend circuit breaker are switched off here and now."""
    return bool(ACTIVE) and any(mode.limits for mode in _modes())


def retries_off() -> bool:
    """Whether retries are switched off here and now (each call makes one attempt)."""
    return bool(ACTIVE) and any(mode.retries for mode in _modes())


class _Scope:
    """The shared context-manager and decorator behaviour of :func:`disabled` and
    :func:`bypass`."""

    __slots__ = ("_mode", "_tokens")

    def __init__(self, *, limits: bool = False, retries: bool = False) -> None:
        self._mode = _Mode(caching=True, limits=bool(limits), retries=bool(retries))
        self._tokens: list[Any] = []

    def _enter(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _exit(self, token: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> None:
        with _LOCK:
            self._tokens.append(self._enter())
            ACTIVE.append(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _LOCK:
            self._exit(self._tokens.pop())
            ACTIVE.remove(self)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the scope as a decorator: each call runs inside a scope of its own (so calls
        from several threads or tasks at once never share one), ``async def`` ones included."""
        mode = self._mode
        make = type(self)

        if iscoroutinefunction(fn):
            afn = cast("Callable[..., Coroutine[Any, Any, Any]]", fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                with make(limits=mode.limits, retries=mode.retries):
                    return await afn(*args, **kwargs)

            return cast("Callable[P, R]", awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with make(limits=mode.limits, retries=mode.retries):
                return fn(*args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        mode = self._mode
        return (
            f"{type(self).__name__}(caching={mode.caching}, limits={mode.limits}, "
            f"retries={mode.retries}, open={len(self._tokens)})"
        )


class disabled(_Scope):  # noqa: N801 - used like a function, as a context manager
    """Switch caching off in the whole process for the length of a ``with`` block.

    While it is open, every cached call (``cw.cached``, ``cw.guard``, ``cw.coalesce``, the Django
    backend's ``get_or_set``) calls the function directly: nothing is read from or written to
    any layer, no single-flight, no stale serving. It covers every thread and task, including
    ones started before the block; use :func:`bypass` for the current thread or task only.

    Args:
        limits: also switch off rate limits and backend circuit breakers (``cw.rate_limit``,
            ``cw.circuit_breaker`` and inside ``cw.guard``), so a test calling a function many
            times is never refused with :class:`~cacheward.RateLimited` or
            :class:`~cacheward.CircuitOpen`.
        retries: also switch off retries (``cw.retry`` and inside ``cw.guard``): each call makes
            one attempt and its error reaches the test at once.

    Usable as ``with disabled(): ...``, as a decorator ``@disabled()`` on a test function, and
    through the pytest fixture ``cacheward_disabled`` (registered by cacheward's pytest
    plugin).
    """

    __slots__ = ()

    def __init__(self, *, limits: bool = False, retries: bool = False) -> None:
        super().__init__(limits=limits, retries=retries)

    def _enter(self) -> Any:
        _PROCESS.append(self._mode)
        return None

    def _exit(self, token: Any) -> None:
        _PROCESS.remove(self._mode)


class bypass(_Scope):  # noqa: N801 - used like a function, as a context manager
    """Skip the caches for calls made in this thread or asyncio task, for a ``with`` block.

    ``with cw.bypass(): load_config("c1")`` calls ``load_config`` directly: the caches are not
    read and the result is not stored. Other threads and tasks are unaffected; asyncio tasks
    created inside the block inherit it (they copy the context), threads do not.

    Args:
        limits: also skip rate limits and backend circuit breakers for these calls.
        retries: also skip retries for these calls.
    """

    __slots__ = ()

    def __init__(self, *, limits: bool = False, retries: bool = False) -> None:
        super().__init__(limits=limits, retries=retries)

    def _enter(self) -> Any:
        return _CONTEXT.set((*_CONTEXT.get(), self._mode))

    def _exit(self, token: Any) -> None:
        try:
            _CONTEXT.reset(token)
        except ValueError:
            # Left in another context than it was entered in (a generator moved between
            # tasks): drop this scope's mode from the current context instead.
            modes = list(_CONTEXT.get())
            if self._mode in modes:
                modes.reverse()
                modes.remove(self._mode)
                modes.reverse()
            _CONTEXT.set(tuple(modes))
