"""Tags and ``cache_clear``: which entries a tag invalidation drops (pure: no clock, no I/O).

A tag invalidation costs O(1) writes per tag, whatever the number of entries carrying it: each
tag has a *mark* in the shared layer (``cache_tags.lua`` raises it to the server's clock in
microseconds, above its last value), and an entry carrying the tag is valid only while its own
stamp is above the mark. An entry's stamp is the fencing token of the lease its rebuild took
(the server's clock when the rebuild *started*), or, for a write without a lease, its
``created`` stamp in microseconds (the same rule as a key's own invalidation mark). So an entry
written before the invalidation, or by a rebuild that started before it, is a miss for every
reader from then on; the scripts check it in the round trip that reads (or writes) the entry.

``fn.cache_clear()`` is a tag invalidation of a tag every entry of the function carries
implicitly (:func:`clear_mark`). In this process, a memory layer keeps no marks (the hit path
checks nothing): a :class:`TagIndex` maps each tag to the keys that carry it, and the driver
drops those keys (and fences their fetches in flight) when the tag is invalidated here or
announced by another process on the backplane.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "MAX_TAG_LENGTH",
    "TagIndex",
    "check_tag",
    "check_tags_setting",
    "clear_mark",
    "fenced",
    "stamp_of",
    "tag_mark",
    "tags_of",
]

#: The longest tag accepted, in characters.
MAX_TAG_LENGTH: Final = 256


def check_tag(tag: object, where: str) -> str:
    """A tag as given by the user: a non-empty ``str`` of at most :data:`MAX_TAG_LENGTH`.

    Raises:
        ConfigurationTypeError: not a ``str``.
        ConfigurationError: empty or too long.
    """
    if type(tag) is not str:
        raise ConfigurationTypeError(
            f"{where}: a tag must be a str (e.g. f'customer:{{customer_id}}'), "
            f"got {type(tag).__name__} {tag!r}"
        )
    if not tag or len(tag) > MAX_TAG_LENGTH:
        raise ConfigurationError(
            f"{where}: a tag must be 1 to {MAX_TAG_LENGTH} characters, got {len(tag)}"
        )
    return tag


def _as_tuple(given: object, where: str) -> tuple[str, ...]:
    if isinstance(given, (str, bytes)) or not isinstance(given, collections.abc.Iterable):
        raise ConfigurationTypeError(
            f"{where} must be a list of str (tags=['customers']), got {type(given).__name__} "
            f"{given!r}"
        )
    return tuple(dict.fromkeys(check_tag(tag, where) for tag in given))


def check_tags_setting(
    tags: object,
) -> tuple[str, ...] | Callable[..., Iterable[str]] | None:
    """``tags=`` of ``cached``/``guard``: ``None``, a list of tags, or a function of the call's
    arguments returning one (checked on each miss).

    Raises:
        ConfigurationTypeError: anything else, naming ``tags=``.
    """
    if tags is None:
        return None
    if callable(tags):
        return tags
    fixed = _as_tuple(tags, "tags=")
    return fixed or None


def tags_of(
    setting: tuple[str, ...] | Callable[..., Iterable[str]] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[str, ...]:
    """The tags of one call (the ``tags=`` function's result, checked).

    Raises:
        ConfigurationTypeError: the function returned something other than a list of str.
    """
    if setting is None:
        return ()
    if type(setting) is tuple:
        return setting
    return _as_tuple(setting(*args, **kwargs), "the result of tags=")  # type: ignore[operator]


def tag_mark(tag: str) -> str:
    """The shared layer's mark name of a user's tag."""
    return f"t:{tag}"


def clear_mark(namespace: str) -> str:
    """The mark name of ``cache_clear`` of the function whose namespace is ``namespace``
    (``"<namespace>:v<version>"``): a tag every entry of the function carries."""
    return f"c:{namespace}"


def stamp_of(created: float, token: float) -> float:
    """An entry's stamp in microseconds: its rebuild's lease token, else ``created``."""
    return token if token > 0 else created * 1_000_000.0


def fenced(stamp: float, marks: Iterable[Any]) -> bool:
    """Whether an entry with ``stamp`` was invalidated by one of ``marks`` (the marks' stored
    values, ``None`` where there is none; anything not a number counts as none)."""
    for mark in marks:
        try:
            value = float(mark)
        except (TypeError, ValueError):
            continue
        if stamp <= value:
            return True
    return False


class TagIndex:
    """In this process: which keys of one function's memory layer carry which tag.

    Records keys on the slow path (a miss, a write), never on a hit. Keys evicted from the
    memory layer stay recorded until :meth:`prune` (called once the index outgrows a bound)
    forgets those the given test no longer holds, so it stays within a few times the memory
    layer's size.
    """

    __slots__ = ("bound", "by_key", "by_tag")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.by_tag: dict[str, set[Hashable]] = {}
        self.by_key: dict[Hashable, tuple[str, ...]] = {}

    def add(self, local: Hashable, tags: tuple[str, ...], held: Callable[[Hashable], bool]) -> None:
        """Record that ``local`` carries ``tags``."""
        if not tags or self.by_key.get(local) == tags:
            return
        self.discard(local)
        self.by_key[local] = tags
        for tag in tags:
            self.by_tag.setdefault(tag, set()).add(local)
        if len(self.by_key) > self.bound:
            self.prune(held)

    def discard(self, local: Hashable) -> None:
        for tag in self.by_key.pop(local, ()):
            group = self.by_tag.get(tag)
            if group is not None:
                group.discard(local)
                if not group:
                    del self.by_tag[tag]

    def pop(self, tags: Iterable[str]) -> set[Hashable]:
        """Forget and return every key carrying any of ``tags``."""
        found: set[Hashable] = set()
        for tag in tags:
            found |= self.by_tag.get(tag, set())
        for local in found:
            self.discard(local)
        return found

    def clear(self) -> None:
        self.by_tag.clear()
        self.by_key.clear()

    def prune(self, held: Callable[[Hashable], bool]) -> None:
        """Forget the keys ``held`` says are gone (evicted or expired out of memory)."""
        for local in [k for k in self.by_key if not held(k)]:
            self.discard(local)
        # All still held: prune less often (amortized O(1) per add).
        self.bound = max(self.bound, 2 * len(self.by_key))

    def __len__(self) -> int:
        return len(self.by_key)
