"""Frozen dataclasses built at first use, so that ``import cacheward`` does not import
:mod:`dataclasses`.

:mod:`dataclasses` imports :mod:`inspect` (and with it ``ast``, ``dis``, ...), and building a
frozen dataclass compiles its methods: together about a fifth of ``import cacheward``. A class
that derives from :class:`Frozen` is exactly what ``@dataclasses.dataclass(frozen=True)`` makes
of it, built the first time it is needed:

- at its first instantiation (the placeholder ``__init__`` on :class:`Frozen` builds the class,
  whose own generated ``__init__`` then shadows the placeholder for good);
- or at its first inspection: :func:`dataclasses.fields`, :func:`~dataclasses.is_dataclass`,
  :func:`~dataclasses.asdict` and :func:`~dataclasses.replace` read ``__dataclass_fields__``,
  which the metaclass builds on demand.

After that the class is an ordinary frozen dataclass: no lookup or call goes through this module.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: object) -> Any:
        return lambda cls: cls


__all__ = ["Frozen"]

_LOCK = threading.RLock()

#: What a class that is not built yet lacks, and building gives it.
_BUILT_BY_DATACLASS = frozenset({"__dataclass_fields__", "__dataclass_params__", "__match_args__"})


def _record_of(cls: type) -> type | None:
    """The record class ``cls`` is or derives from: the one declared with :class:`Frozen` as a
    direct base (a plain subclass of a record is not a record itself, as with dataclasses)."""
    return next((c for c in cls.__mro__ if Frozen in c.__bases__), None)


def _build(cls: type) -> None:
    record = _record_of(cls)
    if record is None:
        return
    with _LOCK:  # two threads' first instances: one builds, the other finds it built
        if "__dataclass_fields__" not in record.__dict__:
            import dataclasses

            dataclasses.dataclass(frozen=True)(record)


@dataclass_transform(frozen_default=True)
class _FrozenMeta(type):
    def __getattr__(cls, name: str) -> Any:
        # Only reached for an attribute the class does not have.
        if name in _BUILT_BY_DATACLASS and _record_of(cls) is not None:
            _build(cls)
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    return klass.__dict__[name]
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")


class Frozen(metaclass=_FrozenMeta):
    """Base of a record class: a ``@dataclasses.dataclass(frozen=True)`` built at first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        _build(cls)
        cls.__init__(self, *args, **kwargs)
