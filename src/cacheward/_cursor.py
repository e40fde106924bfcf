"""Keyset cursors: opaque, URL-safe strings built from the last row's sort key.

A cursor is ``c1.<payload>`` or, with a secret, ``c1.<payload>.<signature>``: the payload is the
sort key as typed JSON in URL-safe base64, the signature a truncated HMAC-SHA256 over the scope
and the payload. Decoding anything else (garbled, truncated, forged, signed with another secret
or for another scope) raises :class:`InvalidCursor`, never a crash in the query.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from cacheward._config import check_positive_int
from cacheward._errors import CacheWardError, ConfigurationError, ConfigurationTypeError
from cacheward._pages import Page

__all__ = ["CursorCodec", "InvalidCursor"]

R = TypeVar("R")

_PREFIX = "c1"
_MAC_BYTES = 16
_MIN_SECRET = 16


class InvalidCursor(CacheWardError, ValueError):
    """A cursor could not be decoded: garbled, truncated, too long, or its signature is wrong.

    Treat it as a bad request from whoever sent the cursor (HTTP 400), not as a server error.
    """


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii() or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pack(value: object) -> object:
    """One sort-key value as JSON: JSON scalars as themselves, other types as a tagged dict."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ConfigurationError(f"a cursor cannot hold the float {value!r}")
        return value
    if isinstance(value, datetime.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"da": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"tm": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, bytes):
        return {"b": _b64(value)}
    raise ConfigurationTypeError(
        f"a cursor's sort key values must be None, bool, int, float, str, bytes, date, time, "
        f"datetime, Decimal or UUID; got {type(value).__name__}"
    )


_UNPACK: dict[str, Callable[[str], object]] = {
    "dt": datetime.datetime.fromisoformat,
    "da": datetime.date.fromisoformat,
    "tm": datetime.time.fromisoformat,
    "dec": decimal.Decimal,
    "uuid": uuid.UUID,
    "b": _unb64,
}


def _unpack(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        # JSON text such as 1e999 or NaN parses to a float that encode() refuses: a cursor
        # decodes only to a key this codec could have issued.
        raise ValueError("non-finite float")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        unpack = _UNPACK.get(tag)
        if unpack is not None and isinstance(text, str):
            result = unpack(text)
            if isinstance(result, decimal.Decimal) and not result.is_finite():
                raise ValueError("non-finite Decimal")
            return result
    raise ValueError("unknown value in cursor")


class CursorCodec:
    """Encodes a row's sort key as an opaque cursor, and decodes it back.

    Args:
        secret: if given (``str`` or ``bytes``, at least 16 bytes), cursors are HMAC-signed and
            only cursors signed with this secret decode, so clients cannot forge or edit them.
            Without it cursors are merely opaque (anyone can build one).
        scope: mixed into the signature, so a cursor issued for one listing (``"config"``) is
            rejected by another (``"users"``) that shares the secret.
        arity: if given, the number of sort-key values a cursor must hold (e.g. ``2`` for
            ``(name, id)``); any other number is an :class:`InvalidCursor`.
        max_length: longer cursors are rejected before any decoding work.

    Example:
        ```python
        cursors = cw.CursorCodec(secret=settings.CURSOR_SECRET, scope="config", arity=2)

        def config_page(customer_id: str, cursor: str | None, limit: int) -> cw.Page[Row]:
            after = cursors.decode(cursor)  # None for the first page
            rows = query_rows(customer_id, after, limit + 1)  # (name, id) > (?, ?) LIMIT ?
            return cursors.page(rows, limit, key=lambda row: (row.name, row.id))
        ```
    """

    __slots__ = ("_secret", "arity", "max_length", "scope")

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        scope: str = "",
        arity: int | None = None,
        max_length: int = 4096,
    ) -> None:
        if secret is not None:
            if isinstance(secret, str):
                secret = secret.encode("utf-8")
            if not isinstance(secret, bytes):
                raise ConfigurationTypeError(
                    f"secret must be str, bytes or None, got {type(secret).__name__}"
                )
            if len(secret) < _MIN_SECRET:
                raise ConfigurationError(
                    f"secret must be at least {_MIN_SECRET} bytes, got {len(secret)}; use for "
                    "example secrets.token_urlsafe(32)"
                )
        if not isinstance(scope, str):
            raise ConfigurationTypeError(f"scope must be a str, got {type(scope).__name__}")
        self._secret = secret
        self.scope = scope
        self.arity = None if arity is None else check_positive_int("arity", arity)
        self.max_length = check_positive_int("max_length", max_length, minimum=16)

    @property
    def signed(self) -> bool:
        """Whether cursors carry (and must carry) a signature."""
        return self._secret is not None

    def _mac(self, secret: bytes, payload: str) -> str:
        message = b"cacheward-cursor\x00%s\x00%s" % (self.scope.encode(), payload.encode())
        return _b64(hmac.new(secret, message, hashlib.sha256).digest()[:_MAC_BYTES])

    def encode(self, key: Sequence[Any]) -> str:
        """Return the cursor for the sort key ``key`` (a tuple of the row's sort-key values).

        Raises:
            ConfigurationError: a value cannot be put in a cursor, or ``key`` has the wrong
                number of values for ``arity``.
        """
        if isinstance(key, (str, bytes)) or not isinstance(key, Sequence):
            raise ConfigurationTypeError(
                f"key must be a tuple of sort-key values, e.g. (row.name, row.id), got "
                f"{type(key).__name__}"
            )
        if self.arity is not None and len(key) != self.arity:
            raise ConfigurationError(
                f"key has {len(key)} values but this codec has arity={self.arity}"
            )
        raw = json.dumps([_pack(v) for v in key], separators=(",", ":"), ensure_ascii=False)
        payload = _b64(raw.encode("utf-8"))
        cursor = f"{_PREFIX}.{payload}"
        if self._secret is not None:
            cursor = f"{cursor}.{self._mac(self._secret, payload)}"
        if len(cursor) > self.max_length:
            raise ConfigurationError(
                f"the cursor would be {len(cursor)} characters, over max_length="
                f"{self.max_length}; sort by shorter keys or raise max_length"
            )
        return cursor

    @overload
    def decode(self, cursor: None) -> None: ...
    @overload
    def decode(self, cursor: str) -> tuple[Any, ...]: ...

    def decode(self, cursor: str | None) -> tuple[Any, ...] | None:
        """Return the sort key in ``cursor`` (``None`` stays ``None``: the first page).

        Raises:
            InvalidCursor: the cursor is not one this codec issued.
        """
        if cursor is None:
            return None
        if not isinstance(cursor, str):
            raise InvalidCursor(f"a cursor must be a str, got {type(cursor).__name__}")
        if len(cursor) > self.max_length:
            raise InvalidCursor(
                f"cursor is {len(cursor)} characters, over max_length={self.max_length}"
            )
        parts = cursor.split(".")
        expected = 3 if self._secret is not None else 2
        if len(parts) != expected or parts[0] != _PREFIX:
            shown = cursor if len(cursor) <= 40 else cursor[:37] + "..."
            detail = (
                "unsigned, but this codec requires a signature"
                if self._secret is not None and len(parts) == 2 and parts[0] == _PREFIX
                else "not a cacheward keyset cursor (garbled or truncated)"
            )
            raise InvalidCursor(f"cursor {shown!r} is {detail}")
        payload = parts[1]
        if self._secret is not None and not hmac.compare_digest(
            self._mac(self._secret, payload).encode(), parts[2].encode("ascii", "replace")
        ):
            raise InvalidCursor(
                "cursor signature does not match: it was altered, issued for another scope, "
                "or signed with another secret"
            )
        try:
            values = json.loads(_unb64(payload).decode("utf-8"))
            if not isinstance(values, list):
                raise TypeError("not a list")  # noqa: TRY301 - one handler for every garble
            key = tuple(_unpack(v) for v in values)
        except (
            ValueError,
            TypeError,
            binascii.Error,
            UnicodeDecodeError,
            RecursionError,
            decimal.InvalidOperation,
        ):
            raise InvalidCursor(
                "cursor payload is garbled: not a cacheward keyset cursor"
            ) from None
        if self.arity is not None and len(key) != self.arity:
            raise InvalidCursor(f"cursor holds {len(key)} values, expected {self.arity}")
        return key

    def page(
        self,
        rows: Sequence[R],
        limit: int,
        *,
        key: Callable[[R], Sequence[Any]],
        lookahead: bool = True,
    ) -> Page[R]:
        """Build the :class:`Page` for ``rows``, with the next cursor from the last row's key.

        Args:
            rows: the query's rows, in sort order.
            limit: the page size the page function was called with.
            key: the sort key of a row, e.g. ``lambda row: (row.name, row.id)``.
            lookahead: ``True`` (the default) when the query asked for ``LIMIT limit + 1``:
                more than ``limit`` rows means there is a next page, and the extra row is left
                out of this one; ``limit`` rows or fewer is the last page. ``False`` when the
                query asked for ``LIMIT limit``: exactly ``limit`` rows may have a next page
                (which may turn out empty), fewer is the last page.
        """
        check_positive_int("limit", limit)
        if len(rows) > limit:
            items = list(rows[:limit])
        elif not lookahead and rows and len(rows) == limit:
            items = list(rows)
        else:
            return Page(list(rows), None)
        return Page(items, self.encode(key(items[-1])))

    def __repr__(self) -> str:
        return f"CursorCodec(signed={self.signed}, scope={self.scope!r}, arity={self.arity})"
