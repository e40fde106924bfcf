"""``inspect``'s predicates, loaded at first use: ``import cacheward`` does not import ``inspect``
(nor ``asyncio``, which imports it), so a program pays for them only when it decorates.

Each function is :mod:`inspect`'s own, called through a local import (a ``sys.modules`` look-up
once loaded); ``tests/test_imports.py`` checks what ``import cacheward`` loads.
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import CoroutineType
from typing import Any, TypeGuard

__all__ = [
    "isasyncgenfunction",
    "isawaitable",
    "iscoroutine",
    "iscoroutinefunction",
    "isfunction",
    "isgeneratorfunction",
    "ismethod",
]


def iscoroutinefunction(obj: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(obj)


def isgeneratorfunction(obj: Any) -> bool:
    import inspect

    return inspect.isgeneratorfunction(obj)


def isasyncgenfunction(obj: Any) -> bool:
    import inspect

    return inspect.isasyncgenfunction(obj)


def isawaitable(obj: object) -> TypeGuard[Awaitable[Any]]:
    import inspect

    return inspect.isawaitable(obj)


def iscoroutine(obj: object) -> TypeGuard[CoroutineType[Any, Any, Any]]:
    import inspect

    return inspect.iscoroutine(obj)


def isfunction(obj: Any) -> bool:
    import inspect

    return inspect.isfunction(obj)


def ismethod(obj: Any) -> bool:
    import inspect

    return inspect.ismethod(obj)
