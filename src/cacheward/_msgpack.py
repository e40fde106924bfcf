"""The default codec: MessagePack (``msgspec``) with extension types for exact Python types.

MessagePack has one array type and a handful of scalars, so a ``tuple`` would come back a
``list`` and a ``Decimal`` a ``str``. This codec walks the value once before ``msgspec``
encodes it and wraps every value whose type MessagePack would lose in an extension (``Ext``)
that says what it was; ``msgspec`` calls :func:`_ExtTypes.ext_hook` for each one while decoding,
in C otherwise. A container of plain scalars is checked with one ``set(map(type, ...))`` (C
speed) and passed to ``msgspec`` as it is, so the walk costs little for JSON-like data.

Extension codes (the bytes are part of the format; never renumber):

====  =========================  ===============================================
code  type                       payload
====  =========================  ===============================================
1     ``tuple``                  MessagePack array of the items
2     ``set``                    array of the items
3     ``frozenset``              array of the items
4     ``datetime``               ISO 8601 text, plus ``[Zone/Key]`` for a zoneinfo zone
5     ``date``                   ISO 8601 text
6     ``time``                   ISO 8601 text (with its UTC offset, if any)
7     ``timedelta``              array ``[days, seconds, microseconds]``
8     ``Decimal``                its ``str`` (exact: precision, exponent, NaN, -0)
9     ``UUID``                   16 bytes
10    ``int`` beyond 64 bits     two's-complement big-endian bytes
11    ``dict`` with keys that    array ``[key, value, key, value, ...]``
      MessagePack cannot hold
12    a registered type          array ``[name, state]``
13    ``bytearray``              the bytes
14    a ``list`` of rows         a row type, then the rows or the columns (see below)
15    a ``dict`` of rows         a row type, then the dict, or the keys (all ``str`` or all
                                 ``int``) and the columns
16    a ``list`` of records      a row type, the field names, then the rows or the columns
17    a ``dict`` of records      a row type, then the field names and the dict of rows, or
                                 the keys, the field names and the columns
====  =========================  ===============================================

**Rows.** What a database driver returns — many tuples of the same shape — is the common large
value, and tagging every tuple, ``Decimal`` and ``datetime`` would cost a Python call each way
per cell. A list (or the values of a dict) of at least 8 tuples whose columns each hold one
type (or that type and ``None``) among ``int``, ``str``, ``float``, ``bool``, ``None``,
``bytes``, ``Decimal``, ``UUID``, ``date``, ``datetime`` (naive, UTC or a fixed offset, ``fold``
0) and ``list`` of plain scalars is stored as one extension: a one-byte length, the row type
as text (one letter per column, ``?`` for "or ``None``"), then the table. The reader builds one
typed ``msgspec`` decoder for that row type (cached). A table of fewer than 256 rows is written
row by row (the list of rows, or the dict) and decoded by that decoder in one call, rows and
dict built in C. A larger one is written column by column (``|`` before the row type: a
MessagePack array of the columns, each an array of its cells): the reader decodes every column
in C (``datetime`` included; ``Decimal`` columns as text, then converted by one exact, trapping
``decimal.Context``), checks that the columns are equally long, and zips them back into tuples,
in C — fewer, tighter passes than building each row, which pays from a few hundred rows on.
**Records** are the same for dicts with the same ``str`` keys in the same order (what a
dict-row cursor or a JSON API returns), when the first one holds a ``Decimal``, ``UUID``,
``date`` or ``datetime`` (other dicts go to msgspec as they are); they come back with their
keys in their order. Anything else takes the tagged path.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import itertools
import operator
import typing
import uuid
from collections.abc import Callable
from typing import Any, Final

from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._serialize import check_signing_key

__all__ = ["MsgpackSerializer"]

_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA = 1, 2, 3, 4, 5, 6, 7
_DECIMAL, _UUID, _BIGINT, _PAIRS, _OBJECT, _BYTEARRAY = 8, 9, 10, 11, 12, 13
_ROWS, _ROWS_BY_KEY, _RECORDS, _RECORDS_BY_KEY = 14, 15, 16, 17
_ROW_CODES: Final = frozenset({_ROWS, _ROWS_BY_KEY, _RECORDS, _RECORDS_BY_KEY})

_MAX_DEPTH: Final = 200
#: Exact types MessagePack gives back unchanged (``int`` within 64 bits: see ``_BIG``).
_PLAIN: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None), bytes})
#: The same without ``int``: the slow walk, after ``msgspec`` refused an int over 64 bits.
_PLAIN_NO_INT: Final[frozenset[type]] = frozenset({str, float, bool, type(None), bytes})
#: Key types MessagePack maps hold and ``msgspec`` gives back (arrays come back as tuples).
_KEYS: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None), bytes})
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

#: Rows: the fewest tuples worth a typed decoder, the fewest written column by column (below
#: that, building the columns costs more than it saves: measured), the column letters, and
#: C-level helpers.
_ROWS_MIN: Final = 8
_COLUMNAR_MIN: Final = 256
_COLUMN: Final[dict[type, str]] = {
    int: "i",
    str: "s",
    float: "f",
    bool: "b",
    type(None): "n",
    bytes: "y",
    decimal.Decimal: "D",
    uuid.UUID: "U",
    datetime.date: "d",
    datetime.datetime: "t",  # "T" when written as ISO text (a fixed offset other than UTC)
    list: "l",
}
_COLUMN_TYPE: Final[dict[str, Any]] = {
    "i": int,
    "s": str,
    "f": float,
    "b": bool,
    "n": None,
    "y": bytes,
    "D": decimal.Decimal,
    "U": uuid.UUID,
    "d": datetime.date,
    "t": datetime.datetime,
    "T": datetime.datetime,
    "l": list[Any],
}
_TYPES_OF: Final = functools.partial(map, type)
_NOT_NONE: Final = functools.partial(operator.is_not, None)
_TZINFO: Final = operator.attrgetter("tzinfo")
_FOLD: Final = operator.attrgetter("fold")
_ISO: Final = operator.methodcaller("isoformat")
_UTC: Final = datetime.timezone.utc
_ROW_DECODERS_MAX: Final = 256
#: ``Decimal(text)`` without the thread's context lookup (about 15% faster). Every ``str`` of a
#: ``Decimal`` comes back exact: unlimited precision and exponent range, and every condition
#: that could change a value (or accept text ``str(Decimal)`` never writes) raises instead.
_DECIMAL_FROM_STR: Final = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[
        decimal.InvalidOperation,
        decimal.Overflow,
        decimal.Underflow,
        decimal.Inexact,
        decimal.Rounded,
        decimal.Clamped,
    ],
).create_decimal


def _msgspec() -> Any:
    try:
        import msgspec
    except ImportError:
        raise ConfigurationError(
            "MsgpackSerializer needs the msgspec package: pip install 'cacheward[msgspec]'"
        ) from None
    return msgspec


class _Registered:
    __slots__ = ("cls", "from_state", "name", "to_state")

    def __init__(
        self,
        cls: type,
        name: str,
        to_state: Callable[[Any], Any],
        from_state: Callable[[Any], Any],
    ) -> None:
        self.cls = cls
        self.name = name
        self.to_state = to_state
        self.from_state = from_state


def _dataclass_codec(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    init = {f.name for f in fields if f.init}

    def to_state(obj: Any) -> Any:
        return {name: getattr(obj, name) for name in names}

    def from_state(state: Any) -> Any:
        obj = cls(**{k: v for k, v in state.items() if k in init})
        for k, v in state.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj

    return to_state, from_state


def _kind_codec(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    if dataclasses.is_dataclass(cls):
        return _dataclass_codec(cls)
    msgspec = _msgspec()
    if issubclass(cls, msgspec.Struct):
        asdict = msgspec.structs.asdict
        return asdict, lambda state: cls(**state)
    if callable(getattr(cls, "model_dump", None)) and callable(
        getattr(cls, "model_validate", None)
    ):  # a pydantic (v2) model
        return (
            lambda obj: obj.model_dump(mode="python"),
            cls.model_validate,  # type: ignore[attr-defined]
        )
    raise ConfigurationTypeError(
        f"{cls.__name__} is not a dataclass, msgspec.Struct or pydantic model; register it "
        "with to_state= and from_state= functions"
    )


class MsgpackSerializer:
    """MessagePack with exact Python types (``msgspec``): the default serializer.

    Values come back with the types they went in with, recursively: ``None``, ``bool``,
    ``int`` (any size), ``float`` (NaN and infinities included), ``str``, ``bytes``,
    ``bytearray``, ``list``, ``tuple``, ``dict`` (keys of any of these types), ``set``,
    ``frozenset``, ``Decimal``, ``UUID``, ``datetime`` / ``date`` / ``time`` / ``timedelta``
    (a ``datetime.timezone`` offset or a ``zoneinfo`` zone is kept), and the classes given in
    ``types`` (dataclasses, ``msgspec.Struct`` and pydantic models, or any class with
    ``to_state`` / ``from_state`` functions: see :meth:`register`). Anything else — subclasses
    such as ``IntEnum`` or a ``str`` subclass included — is refused when it is written
    (``TypeError`` naming the type: the value is then served and kept in memory, not shared).

    Args:
        types: classes to register (see :meth:`register`); every process reading the keys
            must register the same classes under the same names.
        signing_key: ``None`` (a CRC-32 guards against corruption), or a secret of at least
            32 bytes: entries are then signed with HMAC-SHA256 and unsigned or forged ones
            refused.

    Raises:
        ConfigurationError: msgspec is not installed, or a ``types`` entry cannot be registered.
    """

    __slots__ = (
        "_by_name",
        "_by_type",
        "_decode",
        "_encode",
        "_ext",
        "_msgspec",
        "_row_decoders",
        "codec",
        "signing_key",
    )

    def __init__(
        self, *, types: tuple[type, ...] | list[type] = (), signing_key: bytes | None = None
    ) -> None:
        msgspec = _msgspec()
        self.codec = "msgpack-py"
        self.signing_key = check_signing_key(signing_key)
        self._by_type: dict[type, _Registered] = {}
        self._by_name: dict[str, _Registered] = {}
        self._ext = msgspec.msgpack.Ext
        self._msgspec = msgspec
        self._row_decoders: dict[bytes, Callable[[memoryview], Any]] = {}
        self._encode: Callable[[Any], bytes] = msgspec.msgpack.Encoder().encode
        self._decode: Callable[[bytes | memoryview], Any] = msgspec.msgpack.Decoder(
            ext_hook=self._ext_hook
        ).decode
        for cls in types:
            self.register(cls)

    def register(
        self,
        cls: type,
        *,
        name: str | None = None,
        to_state: Callable[[Any], Any] | None = None,
        from_state: Callable[[Any], Any] | None = None,
    ) -> None:
        """Let values of ``cls`` (exactly that class) be stored and come back as ``cls``.

        Args:
            cls: a dataclass, ``msgspec.Struct`` or pydantic model, or any class when
                ``to_state`` and ``from_state`` are given.
            name: the name written into entries (default ``module.QualName``); keep it stable
                across deployments, or old entries become misses.
            to_state: ``obj -> state``, where the state is any value this serializer stores.
            from_state: ``state -> obj``; an exception makes the entry a miss.

        Raises:
            ConfigurationError: ``cls`` is not a class, has no known shape and no functions
                were given, or ``name`` is taken.
        """
        if not isinstance(cls, type):
            raise ConfigurationTypeError(f"register() needs a class, got {cls!r}")
        if (to_state is None) != (from_state is None):
            raise ConfigurationError("give both to_state= and from_state=, or neither")
        if to_state is None or from_state is None:
            to_state, from_state = _kind_codec(cls)
        label = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        if not label:
            raise ConfigurationError(f"name must be a non-empty str, got {label!r}")
        taken = self._by_name.get(label)
        if taken is not None and taken.cls is not cls:
            raise ConfigurationError(
                f"name {label!r} is already registered for {taken.cls.__qualname__}"
            )
        entry = _Registered(cls, label, to_state, from_state)
        self._by_type[cls] = entry
        self._by_name[label] = entry

    # --- encoding ---

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encode(self._pack(value, 0, _PLAIN))
        except OverflowError:
            # An int beyond 64 bits somewhere: walk again, checking every int.
            return self._encode(self._pack(value, 0, _PLAIN_NO_INT))

    def _pack(self, value: Any, depth: int, plain: frozenset[type]) -> Any:
        kind = type(value)
        if kind in plain:
            return value
        if depth > _MAX_DEPTH:
            raise TypeError(f"value is nested more than {_MAX_DEPTH} levels deep")
        pack = self._pack
        down = depth + 1
        if kind is dict:
            keys = set(map(type, value))
            if not keys <= _KEYS or (int in keys and plain is _PLAIN_NO_INT):
                return self._pairs(value, down, plain)
            kinds = set(map(type, value.values()))
            if kinds <= plain:
                return value
            if keys in _ROW_KEYS:
                table = self._table(value, kinds, plain)
                if table is not None:
                    return table
            return {k: v if type(v) in plain else pack(v, down, plain) for k, v in value.items()}
        if kind is list:
            kinds = set(map(type, value))
            if kinds <= plain:
                return value
            table = self._table(value, kinds, plain)
            if table is not None:
                return table
            return [v if type(v) in plain else pack(v, down, plain) for v in value]
        if kind is tuple:
            return self._ext(_TUPLE, self._items(value, down, plain))
        if kind is int:  # only in the slow walk
            if _INT_MIN <= value <= _INT_MAX:
                return value
            size = (value.bit_length() + 8) // 8
            return self._ext(_BIGINT, value.to_bytes(size, "big", signed=True))
        if kind is datetime.datetime:
            return self._ext(_DATETIME, _datetime_text(value).encode())
        if kind is decimal.Decimal:
            return self._ext(_DECIMAL, str(value).encode())
        if kind is uuid.UUID:
            return self._ext(_UUID, value.bytes)
        if kind is datetime.date:
            return self._ext(_DATE, value.isoformat().encode())
        if kind is set:
            return self._ext(_SET, self._items(value, down, plain))
        if kind is frozenset:
            return self._ext(_FROZENSET, self._items(value, down, plain))
        if kind is datetime.time:
            if value.tzinfo is not None and type(value.tzinfo) is not datetime.timezone:
                raise TypeError(
                    "a time with a tzinfo other than datetime.timezone cannot be stored exactly; "
                    "use a fixed offset (datetime.timezone) or a datetime"
                )
            return self._ext(_TIME, value.isoformat().encode())
        if kind is datetime.timedelta:
            return self._ext(
                _TIMEDELTA, self._encode([value.days, value.seconds, value.microseconds])
            )
        if kind is bytearray:
            return self._ext(_BYTEARRAY, bytes(value))
        registered = self._by_type.get(kind)
        if registered is not None:
            state = pack(registered.to_state(value), down, plain)
            return self._ext(_OBJECT, self._encode([registered.name, state]))
        raise TypeError(_refusal(kind))

    def _table(self, container: Any, kinds: set[type], plain: frozenset[type]) -> Any:
        """The rows or records extension for a list (or dict) of ``kinds`` items, or ``None``."""
        if len(container) < _ROWS_MIN:
            return None
        if kinds == _ONLY_TUPLES:
            return self._rows(container, plain)
        if kinds == _ONLY_DICTS:
            return self._records(container, plain)
        return None

    def _rows(self, container: Any, plain: frozenset[type]) -> Any:
        """The rows extension for a list (or dict) of same-shaped tuples, or ``None``."""
        by_key = type(container) is dict
        found = _columns(list(container.values()) if by_key else container, plain)
        if found is None:
            return None
        shape, columns = found
        head = [tuple(container)] if by_key else []
        return self._table_ext(_ROWS_BY_KEY if by_key else _ROWS, shape, columns, head)

    def _records(self, container: Any, plain: frozenset[type]) -> Any:
        """The records extension for a list (or dict) of dicts with the same ``str`` keys, in
        the same order, and one type per key; ``None`` when it does not apply or would not
        help (the first record has no field that MessagePack would not give back: such dicts
        go to msgspec as they are)."""
        by_key = type(container) is dict
        records = list(container.values()) if by_key else container
        if not _TAGGED_CELLS.intersection(map(type, records[0].values())):
            # Decided by the first record, so JSON-like dicts cost one small test.
            return None
        names = set(map(tuple, records))
        if len(names) != 1:
            return None
        (fields,) = names
        if not fields or set(map(type, fields)) != _ONLY_STR:
            return None
        rows = list(map(tuple, map(dict.values, records)))
        found = _columns(rows, plain)
        if found is None:
            return None
        shape, columns = found
        if not _TAGGED_LETTERS.intersection(shape.decode("ascii")):
            return None
        head = [tuple(container), fields] if by_key else [fields]
        return self._table_ext(_RECORDS_BY_KEY if by_key else _RECORDS, shape, columns, head)

    def _table_ext(self, code: int, shape: bytes, columns: list[Any], head: list[Any]) -> Any:
        """The extension: the shape, then ``head`` (keys, field names) and the cells: column by
        column for a large table (``|`` before the shape); row by row for a small one, where a
        typed msgspec decoder builds the rows (and the dict) in one call."""
        body: Any
        if len(columns[0]) >= _COLUMNAR_MIN:
            shape = b"|" + shape
            body = [*head, *columns]
        else:
            rows: Any = list(zip(*columns, strict=True))
            if code in (_ROWS_BY_KEY, _RECORDS_BY_KEY):  # a map, as msgspec decodes it in C
                rows = dict(zip(head.pop(0), rows, strict=True))
            body = [*head, rows] if head else rows
        if len(shape) > 255:
            return None
        return self._ext(code, bytes((len(shape),)) + shape + self._encode(body))

    def _items(self, items: Any, depth: int, plain: frozenset[type]) -> bytes:
        if set(map(type, items)) <= plain:
            return self._encode(list(items))
        pack = self._pack
        return self._encode([v if type(v) in plain else pack(v, depth, plain) for v in items])

    def _pairs(self, value: dict[Any, Any], depth: int, plain: frozenset[type]) -> Any:
        flat: list[Any] = []
        pack = self._pack
        for k, v in value.items():
            flat.append(k if type(k) in plain else pack(k, depth, plain))
            flat.append(v if type(v) in plain else pack(v, depth, plain))
        return self._ext(_PAIRS, self._encode(flat))

    # --- decoding ---

    def loads(self, data: bytes) -> Any:
        return self._decode(data)

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        if code == _TUPLE:
            return tuple(self._decode(data))
        if code == _DATETIME:
            return _parse_datetime(str(data, "utf-8"))
        if code == _DECIMAL:
            return decimal.Decimal(str(data, "ascii"))
        if code == _UUID:
            return uuid.UUID(bytes=bytes(data))
        if code == _DATE:
            return datetime.date.fromisoformat(str(data, "ascii"))
        if code == _SET:
            return set(self._decode(data))
        if code == _FROZENSET:
            return frozenset(self._decode(data))
        if code == _TIME:
            return datetime.time.fromisoformat(str(data, "ascii"))
        if code == _TIMEDELTA:
            days, seconds, micros = self._decode(data)
            return datetime.timedelta(days, seconds, micros)
        if code == _BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == _PAIRS:
            flat = self._decode(data)
            it = iter(flat)
            return dict(zip(it, it, strict=True))
        if code == _OBJECT:
            name, state = self._decode(data)
            registered = self._by_name.get(name)
            if registered is None:
                raise ValueError(f"type {name!r} is not registered with this serializer")
            return registered.from_state(state)
        if code == _BYTEARRAY:
            return bytearray(data)
        if code in _ROW_CODES:
            size = data[0]
            shape = bytes(data[1 : 1 + size])
            decode = self._row_decoders.get(bytes((code,)) + shape)
            if decode is None:
                decode = self._row_decoder(code, shape)
            return decode(data[1 + size :])
        raise ValueError(f"unknown extension type {code}")

    def _row_decoder(self, code: int, shape: bytes) -> Callable[[memoryview], Any]:
        by_key = code in (_ROWS_BY_KEY, _RECORDS_BY_KEY)
        records = code in (_RECORDS, _RECORDS_BY_KEY)
        columnar = shape.startswith(b"|")
        kinds: list[Any] = []
        exact: list[int] = []  # columnar Decimal columns: decoded as text, converted after
        for letter in shape.removeprefix(b"|").decode("ascii").split(","):
            base = letter.removesuffix("?")
            kind = _COLUMN_TYPE[base]  # KeyError: garbage, a miss
            if letter != base:
                kind = typing.Optional[kind]  # noqa: UP045
            elif base == "D" and columnar:
                exact.append(len(kinds))
                kind = str
            kinds.append(kind)
        width = len(kinds)
        decode: Callable[[memoryview], Any]
        if columnar:
            decode = self._columns_decoder(kinds, exact, by_key=by_key, records=records)
        else:
            row: Any = tuple.__class_getitem__(tuple(kinds))
            table: Any = dict[Any, row] if by_key else list[row]
            if records:
                decode = self._records_decoder(tuple[list[str], table], width)
            else:
                decode = self._msgspec.msgpack.Decoder(table).decode
        if len(self._row_decoders) < _ROW_DECODERS_MAX:
            self._row_decoders[bytes((code,)) + shape] = decode
        return decode

    def _columns_decoder(
        self, kinds: list[Any], exact: list[int], *, by_key: bool, records: bool
    ) -> Callable[[memoryview], Any]:
        """Column by column: [keys], [field names], then one list per column (``exact``: the
        ``Decimal`` columns, written as text)."""
        head: list[Any] = ([list[str | int]] if by_key else []) + ([list[str]] if records else [])
        first, width = len(head), len(kinds)
        whole: Any = tuple.__class_getitem__((*head, *[list[kind] for kind in kinds]))  # type: ignore[valid-type]
        decode_whole = self._msgspec.msgpack.Decoder(whole).decode

        def decode(data: memoryview) -> Any:
            decoded = list(decode_whole(data))
            cells = decoded[first:]
            if not _same_lengths(cells + decoded[:1] if by_key else cells):
                raise ValueError("rows: columns of unequal lengths")
            for index in exact:
                cells[index] = list(map(_DECIMAL_FROM_STR, cells[index]))
            # Lengths checked above, at once: a strict zip checks them again per row.
            rows: Any = zip(*cells, strict=False)
            if records:
                names = itertools.repeat(_names(decoded[first - 1], width))
                rows = map(dict, map(zip, names, rows))
            if by_key:
                return dict(zip(decoded[0], rows, strict=False))
            return list(rows)

        return decode

    def _records_decoder(self, whole: Any, width: int) -> Callable[[memoryview], Any]:
        """Row by row: the field names, then the rows (a list, or a dict of them)."""
        decode_whole = self._msgspec.msgpack.Decoder(whole).decode

        def decode(data: memoryview) -> Any:
            names, rows = decode_whole(data)
            names = itertools.repeat(_names(names, width))
            if type(rows) is dict:
                return dict(zip(rows, map(dict, map(zip, names, rows.values())), strict=False))
            return list(map(dict, map(zip, names, rows)))

        return decode

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._by_name))
        return f"MsgpackSerializer(types=[{names}])"


_ONLY_TUPLES: Final = frozenset({tuple})
_ONLY_DICTS: Final = frozenset({dict})
_ONLY_STR: Final = frozenset({str})
_ROW_KEYS: Final = ({str}, {int})
#: Column letters of types MessagePack would not give back (records use the typed path only
#: when a field has one of these: plain dicts go to msgspec as they are, in C).
_TAGGED_LETTERS: Final = frozenset("DUdtT")
_TAGGED_CELLS: Final = frozenset({decimal.Decimal, uuid.UUID, datetime.date, datetime.datetime})


def _columns(rows: list[Any], plain: frozenset[type]) -> tuple[bytes, list[Any]] | None:
    """The row type and the columns of same-shaped tuples (see the module docstring), or
    ``None`` when a column holds more than one type (and ``None``) or one without a letter."""
    signatures = set(map(tuple, map(_TYPES_OF, rows)))
    widths = {len(s) for s in signatures}
    if len(widths) != 1 or not widths.pop():
        return None
    # Column-wise from here on, so the loops run in C (and the reader decodes each column
    # with one typed decoder, then zips the rows back together).
    columns = list(zip(*rows, strict=True))
    letters = []
    for index, column in enumerate(zip(*signatures, strict=True)):
        kinds = set(column)
        optional = type(None) in kinds and len(kinds) > 1
        if optional:
            kinds.discard(type(None))
        if len(kinds) != 1:
            return None
        (kind,) = kinds
        letter = _COLUMN.get(kind)
        if letter is None:
            return None
        if letter in "itl":
            cells = columns[index]
            if optional:
                cells = tuple(filter(_NOT_NONE, cells))
            if letter == "i":
                if plain is _PLAIN_NO_INT and not _INT_MIN <= min(cells) <= max(cells) <= _INT_MAX:
                    return None
            elif letter == "l":
                if not set(map(type, itertools.chain.from_iterable(cells))) <= plain:
                    return None
            else:
                found = _datetime_letter(cells)
                if found is None:
                    return None
                letter = found
                if letter == "T":
                    if optional:
                        columns[index] = tuple(
                            [None if c is None else c.isoformat() for c in columns[index]]
                        )
                    else:
                        columns[index] = tuple(map(_ISO, columns[index]))
        letters.append(letter + "?" if optional else letter)
    return ",".join(letters).encode("ascii"), columns


def _names(names: list[str], width: int) -> list[str]:
    """Records' field names, checked against the row type (forged bytes may not match)."""
    if len(names) != width or len(set(names)) != width:
        raise ValueError("records: field names do not match the columns")
    return names


def _same_lengths(columns: Any) -> bool:
    """Whether the decoded columns (and keys) are all as long: forged bytes may not be, and
    zipping them would cut the rows short instead of making the entry a miss."""
    return len(set(map(len, columns))) == 1


def _datetime_letter(cells: Any) -> str | None:
    """How a column of datetimes is written: ``"t"`` (naive or UTC: msgspec's own encoding),
    ``"T"`` (ISO text, for fixed offsets in whole minutes), ``None`` (not as a column)."""
    if any(map(_FOLD, cells)):
        return None
    zones = set(map(_TZINFO, cells))
    if zones <= {None, _UTC}:
        return "t"
    if all(_fixed_minutes(zone) for zone in zones):
        return "T"
    return None


def _fixed_minutes(zone: object) -> bool:
    """A ``datetime.timezone`` whose offset is whole minutes (what RFC 3339 text can hold)."""
    if type(zone) is not datetime.timezone:
        return False
    offset = zone.utcoffset(None)
    return offset.seconds % 60 == 0 and not offset.microseconds


def _datetime_text(value: datetime.datetime) -> str:
    tz = value.tzinfo
    if tz is None or type(tz) is datetime.timezone:
        return value.isoformat()
    key = getattr(tz, "key", None)
    if type(tz).__name__ == "ZoneInfo" and isinstance(key, str):
        return f"{value.isoformat()}[{key}]"
    raise TypeError(
        f"a datetime with a {type(tz).__name__} tzinfo cannot be stored exactly; use "
        "zoneinfo.ZoneInfo or datetime.timezone"
    )


def _parse_datetime(text: str) -> datetime.datetime:
    if text.endswith("]"):
        import zoneinfo

        base, _, key = text[:-1].partition("[")
        fixed = datetime.datetime.fromisoformat(base)
        # The same wall time in the zone; ``fold`` picks the offset it was written with (the
        # second of two equal wall times when clocks went back).
        zoned = fixed.replace(tzinfo=zoneinfo.ZoneInfo(key))
        if zoned.utcoffset() != fixed.utcoffset():
            zoned = zoned.replace(fold=1 - zoned.fold)
        return zoned
    return datetime.datetime.fromisoformat(text)


def _refusal(kind: type) -> str:
    if (
        dataclasses.is_dataclass(kind)
        or hasattr(kind, "__struct_fields__")
        or hasattr(kind, "model_dump")
    ):
        fix = (
            f"register it: MsgpackSerializer(types=[{kind.__qualname__}]) (every process must "
            "register it)"
        )
    else:
        fix = (
            "convert it to the supported types (None, bool, int, float, str, bytes, list, tuple, "
            "dict, set, frozenset, Decimal, UUID, date/time/datetime/timedelta), register it "
            "with MsgpackSerializer.register(cls, to_state=..., from_state=...), or use "
            "PickleSerializer(key=...)"
        )
    return f"a {kind.__module__}.{kind.__qualname__} cannot be stored exactly; {fix}"
