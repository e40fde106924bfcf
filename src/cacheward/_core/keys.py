"""Cache keys: a cheap local form for the in-process layer, a stable text form for shared layers.

Two calls share a key only when their arguments are equal *and of the same types*, recursively:
``f(1)``, ``f(1.0)``, ``f(True)`` and ``f("1")`` are four keys, and ``f("a b")`` is not
``f("a", "b")``. The text form is the same in every process and bounded in size (hashed).
"""

from __future__ import annotations

import enum
import hashlib
import sys
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from cacheward._errors import ConfigurationTypeError

__all__ = ["CacheKey", "encode_call", "local_key"]

_STR = str
_INT = int


def local_key(args: tuple[Any, ...], kwargs: Mapping[str, Any], names: Sequence[str]) -> Hashable:
    """Return the in-process key for a call.

    The common shapes (no keyword arguments, every argument exactly ``str`` or ``int``) use the
    argument itself or the argument tuple: equality between exact ``str`` and ``int`` values is
    already type-safe. Anything else uses the full typed encoding (``bytes``), so the shapes can
    never be confused with each other: a key is a ``str``, an ``int``, a ``tuple`` of those, or
    ``bytes``.
    """
    if not kwargs:
        if len(args) == 1:
            arg = args[0]
            if type(arg) is _STR or type(arg) is _INT:
                return arg  # type: ignore[no-any-return,unused-ignore]
        elif all(type(a) is _STR or type(a) is _INT for a in args):
            return args
    return encode_call(args, kwargs, names)


def encode_call(args: tuple[Any, ...], kwargs: Mapping[str, Any], names: Sequence[str]) -> bytes:
    """Encode a call's arguments injectively, with their types, as bytes.

    ``names`` are the function's positional parameter names, used only in error messages.

    Raises:
        ConfigurationTypeError: an argument has no stable encoding (unhashable, or a type whose
            equality cacheward cannot vouch for across processes).
    """
    out = bytearray(b"A%d:" % len(args))
    for index, arg in enumerate(args):
        name = names[index] if index < len(names) else f"#{index}"
        _encode(arg, out, name)
    if kwargs:
        out += b"K%d:" % len(kwargs)
        for name in sorted(kwargs):
            raw = name.encode()
            out += b"%d:%s=" % (len(raw), raw)
            _encode(kwargs[name], out, name)
    return bytes(out)


def _encode(value: Any, out: bytearray, name: str) -> None:
    kind = type(value)
    if value is None:
        out += b"N"
    elif kind is bool:
        out += b"T" if value else b"F"
    elif kind is int:
        out += b"i%d;" % value
    elif kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        out += b"s%d:" % len(raw)
        out += raw
    elif kind is float:
        out += b"f" + value.hex().encode() + b";"
    elif kind is bytes:
        out += b"b%d:" % len(value)
        out += value
    elif kind is tuple:
        out += b"(%d:" % len(value)
        for item in value:
            _encode(item, out, name)
        out += b")"
    elif kind is frozenset:
        parts: list[bytes] = []
        for item in value:
            buffer = bytearray()
            _encode(item, buffer, name)
            parts.append(bytes(buffer))
        parts.sort()
        out += b"{%d:" % len(parts)
        out += b"".join(parts)
        out += b"}"
    elif isinstance(value, enum.Enum):
        qual = f"{kind.__module__}.{kind.__qualname__}.{value.name}".encode()
        out += b"e%d:" % len(qual)
        out += qual
    else:
        _encode_stdlib(value, kind, out, name)


def _encode_stdlib(value: Any, kind: type, out: bytearray, name: str) -> None:
    # The standard library's value types, each looked up in ``sys.modules``: an instance of one
    # exists only once its module is imported, so ``import cacheward`` need not import them.
    uuid = sys.modules.get("uuid")
    decimal = sys.modules.get("decimal")
    datetime = sys.modules.get("datetime")
    if uuid is not None and kind is uuid.UUID:
        out += b"u" + value.hex.encode()
    elif decimal is not None and kind is decimal.Decimal:
        text = str(value).encode()
        out += b"d%d:" % len(text)
        out += text
    elif datetime is not None and kind in (datetime.datetime, datetime.date, datetime.time):
        text = value.isoformat().encode()
        out += b"t%s%d:" % (kind.__name__[:2].encode(), len(text))
        out += text
    elif datetime is not None and kind is datetime.timedelta:
        out += b"D%d,%d,%d;" % (value.days, value.seconds, value.microseconds)
    else:
        _reject(value, name)


def _reject(value: Any, name: str) -> None:
    kind = type(value).__name__
    if getattr(type(value), "__hash__", None) is None:
        raise ConfigurationTypeError(
            f"argument {name!r} is a {kind}, which is unhashable and cannot be part of a cache "
            "key; pass a tuple or frozenset instead, or give key= to the decorator"
        )
    raise ConfigurationTypeError(
        f"argument {name!r} has type {kind}, which has no stable cache-key encoding "
        "(supported: None, bool, int, float, str, bytes, tuple, frozenset, Enum, UUID, Decimal, "
        "date, time, datetime, timedelta); give key= to the decorator to map it to those"
    )


class CacheKey:
    """A call's key in both forms.

    Attributes:
        local: the hashable in-process key (see :func:`local_key`).
        namespace: ``"<namespace>:<version>:<module>.<qualname>"`` of the cached function.
        tags: the call's tags (``cached(tags=...)``); a shared layer checks the entry against
            their marks (see ``cacheward._core.tags``).
    """

    __slots__ = ("_args", "_kwargs", "_names", "_text", "local", "namespace", "tags")

    def __init__(  # noqa: PLR0917 - the key's parts in order, as the driver builds them
        self,
        local: Hashable,
        namespace: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        names: Sequence[str],
        tags: tuple[str, ...] = (),
        *,
        text: str | None = None,
    ) -> None:
        self.local = local
        self.namespace = namespace
        self.tags = tags
        self._args = args
        self._kwargs = kwargs
        self._names = names
        #: ``text`` when the caller already knows it (a driver remembers the texts of recent
        #: local keys: the same local key in the same namespace always has the same text).
        self._text = text

    @property
    def text(self) -> str:
        """The stable text key: the namespace and a 128-bit BLAKE2b digest of the typed call."""
        text = self._text
        if text is None:
            digest = hashlib.blake2b(
                encode_call(self._args, self._kwargs, self._names), digest_size=16
            ).hexdigest()
            text = self._text = f"{self.namespace}:{digest}"
        return text

    def __repr__(self) -> str:
        return f"CacheKey(local={self.local!r}, namespace={self.namespace!r})"
