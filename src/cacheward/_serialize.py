"""Serializers for shared layers, and the signed/checked envelope every stored entry travels in.

A :class:`Serializer` turns a value into bytes and back. :func:`encode_entry` wraps those bytes
in an envelope that carries the format version, the serializer's id, the entry's stamps, the
fencing token of the write and the key text, closed by a CRC-32 (or, for a serializer with a
``signing_key``, an HMAC-SHA256). :func:`decode_entry` checks all of that *before* it hands the
body to the serializer, so corrupt, truncated, tampered, foreign or other-key bytes raise
:class:`PayloadError` (which the Redis layer turns into a miss plus a counted event) and a
pickle body is only ever unpickled after its signature checked out.

Envelope layout (big-endian; the Lua scripts read ``created`` and ``token`` at fixed offsets)::

    0  u8   magic 0xC7          4  f64 created        36 f64 token (0: unfenced write)
    1  u8   format version (1)  12 f64 fresh_until    44 u32 key length
    2  u8   flags (1: signed,   20 f64 stale_until    48 codec id, key text, [compression],
             2: compressed)     28 f64 error_until       body, then CRC-32 (4, little-endian)
    3  u8   codec id length                              or HMAC-SHA256 (32)

``[compression]`` is present only with flag 2: ``u8`` algorithm (1 zlib, 2 zstd) and ``u64`` the
body's size once inflated, checked against the reader's limit *before* anything is inflated
(and the inflating itself stops at that size, whatever the stream says).

The key text is the whole Redis key (prefix, namespace, version and the call's digest), so an
entry copied to another key, layer or version is refused as ``wrong_key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import struct
import zlib
from typing import Any, Final, Protocol, runtime_checkable

from cacheward._config import check_positive_int
from cacheward._core.entry import MAX_CLOCK_SKEW, Entry
from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "DEFAULT_COMPRESS_ABOVE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "Envelope",
    "JsonSerializer",
    "MsgspecSerializer",
    "OrjsonSerializer",
    "PayloadError",
    "PickleSerializer",
    "Serializer",
    "UnstorableValue",
    "decode_entry",
    "default_serializer",
    "encode_entry",
]

MAGIC: Final = 0xC7
FORMAT_VERSION: Final = 1
FLAG_SIGNED: Final = 1
FLAG_COMPRESSED: Final = 2
_COMPRESSION: Final = struct.Struct(">BQ")
_HEADER: Final = struct.Struct(">BBBBdddddI")
HEADER_SIZE: Final = _HEADER.size  # 48
_CRC: Final = struct.Struct("<I")
#: CRC-32 of any bytes followed by their own CRC-32 (little-endian): one pass over the whole
#: payload checks it, no slicing.
_CRC_RESIDUE: Final = 0x2144DF1C
_INF: Final = math.inf
_NINF: Final = -math.inf
_MAC_SIZE: Final = 32
_MIN_KEY_BYTES: Final = 32


@runtime_checkable
class Serializer(Protocol):
    """Turns cached values into bytes and back, for layers shared between processes.

    Attributes:
        codec: a short ASCII id written into every payload; a reader whose ``codec`` differs
            treats the payload as foreign (a miss). Two serializers may share an id only if
            each can read the other's bytes.
        signing_key: ``None``, or a secret: payloads are then signed with HMAC-SHA256 and a
            reader with a key refuses any payload whose signature does not verify, before
            ``loads`` sees a byte.
    """

    codec: str
    signing_key: bytes | None

    def dumps(self, value: Any) -> bytes:
        """Return the bytes for ``value``; raise ``TypeError``/``ValueError`` if it cannot."""
        ...

    def loads(self, data: bytes) -> Any:
        """Return the value for ``data`` (any exception makes the entry a miss)."""
        ...


def check_signing_key(key: object, name: str = "signing_key") -> bytes | None:
    """``None``, or ``key`` as ``bytes`` if it is a usable HMAC-SHA256 secret.

    Raises:
        ConfigurationError: not bytes, or shorter than 32 bytes.
    """
    if key is None:
        return None
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigurationTypeError(
            f"{name} must be bytes (e.g. secrets.token_bytes(32)), got {type(key).__name__}"
        )
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{name} must be at least {_MIN_KEY_BYTES} bytes for HMAC-SHA256, got {len(key)}; "
            "generate one with secrets.token_bytes(32)"
        )
    return bytes(key)


# --- JSON ----------------------------------------------------------------------------------------

_JSON_SCALARS: Final = (str, int, bool, type(None))


def check_json_value(value: Any, *, _depth: int = 0) -> None:
    """Raise ``TypeError`` unless ``value`` comes back from JSON exactly as it went in.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list`` and ``dict`` with
    ``str`` keys, nested up to 200 levels, exact types only (a ``tuple`` would come back as a
    ``list``, an ``IntEnum`` as an ``int``, a dict's ``int`` keys as ``str``).
    """
    if _depth > 200:
        raise TypeError("value is nested more than 200 levels deep")
    kind = type(value)
    if kind in _JSON_SCALARS:
        return
    if kind is float:
        if not math.isfinite(value):
            raise TypeError(f"{value!r} does not round-trip through JSON")
        return
    if kind is list:
        for item in value:
            check_json_value(item, _depth=_depth + 1)
        return
    if kind is dict:
        for name, item in value.items():
            if type(name) is not str:
                raise TypeError(
                    f"dict key {name!r} is a {type(name).__name__}; JSON would turn it into a str"
                )
            check_json_value(item, _depth=_depth + 1)
        return
    raise TypeError(
        f"a {kind.__name__} does not round-trip through JSON (it would come back as a different "
        "type); convert it, or use MsgspecSerializer(type=...) or PickleSerializer(key=...)"
    )


class JsonSerializer:
    """JSON with the standard library: the default.

    What round-trips: ``None``, ``bool``, ``int``, finite ``float``, ``str``, and ``list`` /
    ``dict`` (``str`` keys) of those. With ``strict=True`` (the default) anything else is refused
    when it is written (a counted ``encode_error``; the value is still returned to the caller and
    kept in the in-process layer, just not shared), so every process reads back exactly what the
    fetching process cached. ``strict=False`` stores whatever :func:`json.dumps` accepts and lets
    tuples come back as lists, ``int`` dict keys as ``str``, and so on.

    Args:
        strict: refuse values that would not come back unchanged.
        signing_key: sign entries with HMAC-SHA256 under this secret (at least 32 bytes) and
            refuse unsigned or forged ones; ``None``: a CRC-32 guards against corruption only.
    """

    __slots__ = ("_dumps", "_loads", "codec", "signing_key", "strict")

    def __init__(self, *, strict: bool = True, signing_key: bytes | None = None) -> None:
        self.codec = "json"
        self.signing_key = check_signing_key(signing_key)
        self.strict = strict
        self._dumps = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode
        self._loads = json.loads

    def dumps(self, value: Any) -> bytes:
        if self.strict:
            check_json_value(value)
        return self._dumps(value).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return self._loads(data)

    def __repr__(self) -> str:
        return f"JsonSerializer(strict={self.strict})"


class OrjsonSerializer:
    """JSON with ``orjson`` (``pip install cacheward[orjson]``): same bytes, faster.

    Its payloads carry the ``"json"`` codec id, so processes using :class:`JsonSerializer` and
    this one read each other's entries. What round-trips is the same as for
    :class:`JsonSerializer`, except that integers must fit in 64 bits.

    Args:
        strict: refuse values that would not come back unchanged.
        signing_key: see :class:`JsonSerializer`.
    """

    __slots__ = ("_dumps", "_loads", "codec", "signing_key", "strict")

    def __init__(self, *, strict: bool = True, signing_key: bytes | None = None) -> None:
        try:
            import orjson
        except ImportError:
            raise ConfigurationError(
                "OrjsonSerializer needs the orjson package: pip install 'cacheward[orjson]'"
            ) from None
        self.codec = "json"
        self.signing_key = check_signing_key(signing_key)
        self.strict = strict
        self._dumps = orjson.dumps
        self._loads = orjson.loads

    def dumps(self, value: Any) -> bytes:
        if self.strict:
            check_json_value(value)
        return self._dumps(value)

    def loads(self, data: bytes) -> Any:
        return self._loads(data)

    def __repr__(self) -> str:
        return f"OrjsonSerializer(strict={self.strict})"


class MsgspecSerializer:
    """MessagePack with ``msgspec`` (``pip install cacheward[msgspec]``).

    Without ``type`` it round-trips what JSON does plus ``bytes``; ``datetime``, ``UUID`` and
    ``Decimal`` come back as their MessagePack/str forms. With ``type=`` (a ``msgspec.Struct``,
    dataclass, ``TypedDict``, ``tuple[int, str]``, ...) values are decoded and validated as that
    type, so they come back as they went in; a payload that does not match is a miss.

    For exact Python types without declaring a type, use :class:`MsgpackSerializer` (the
    default).

    Args:
        type: the type to decode into (default: any MessagePack value).
        signing_key: see :class:`JsonSerializer`.
    """

    __slots__ = ("_decoder", "_encoder", "codec", "signing_key", "type")

    def __init__(self, *, type: Any = Any, signing_key: bytes | None = None) -> None:
        try:
            import msgspec
        except ImportError:
            raise ConfigurationError(
                "MsgspecSerializer needs the msgspec package: pip install 'cacheward[msgspec]'"
            ) from None
        self.codec = "msgpack"
        self.signing_key = check_signing_key(signing_key)
        self.type = type
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(type)

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)

    def __repr__(self) -> str:
        return f"MsgspecSerializer(type={self.type!r})"


class PickleSerializer:
    """Pickle, signed: only for processes that trust each other and share a secret key.

    Unpickling runs code chosen by whoever wrote the bytes, so every payload is signed with
    HMAC-SHA256 under ``key`` and a reader verifies the signature (always SHA-256: the
    algorithm is never read from the payload) before the body reaches :func:`pickle.loads`.
    Bytes written without the key, or forged, are a miss and a counted ``tampered`` event.
    Everything picklable round-trips, provided every process has the same classes.

    Args:
        key: the shared secret, at least 32 bytes (``secrets.token_bytes(32)``); keep it out of
            the code, e.g. in an environment variable.
        protocol: the pickle protocol to write.

    Raises:
        ConfigurationError: ``key`` is missing or shorter than 32 bytes.
    """

    __slots__ = ("codec", "protocol", "signing_key")

    def __init__(self, *, key: bytes, protocol: int = 5) -> None:
        if key is None:
            raise ConfigurationTypeError(
                "PickleSerializer needs key= (bytes, e.g. secrets.token_bytes(32))"
            )
        self.codec = "pickle"
        self.signing_key: bytes | None = check_signing_key(key, "key")
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        import pickle

        return pickle.dumps(value, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        # Only ever called by decode_entry after the HMAC verified.
        import pickle

        return pickle.loads(data)  # noqa: S301 - the envelope's HMAC was verified first

    def __repr__(self) -> str:
        return f"PickleSerializer(key=<{len(self.signing_key or b'')} bytes>)"


# --- the envelope --------------------------------------------------------------------------------


class PayloadError(Exception):
    """Stored bytes that are not a valid entry for this key and serializer.

    Attributes:
        reason: ``"truncated"``, ``"corrupt"`` (bad checksum, stamps out of order or in the
            future, a compressed body that does not inflate as stated), ``"foreign"`` (another
            format version, codec or compression this reader lacks, or unsigned where a
            signature is required), ``"tampered"`` (bad signature), ``"wrong_key"`` (a valid
            entry of another key, layer or version), ``"too_large"`` (over the reader's
            ``max_payload_bytes``, checked before inflating) or ``"undecodable"`` (the
            serializer refused the body).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _sign(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


#: The default cap on a value's serialized size for shared layers: 8 MiB. The incident's
#: payloads were per-customer configurations of a few MB; a Redis GET of 8 MiB takes a few ms on
#: loopback but tens on a real network, close to a cache timeout of 0.1 s (see docs/redis.md).
DEFAULT_MAX_PAYLOAD_BYTES: Final = 8 * 1024 * 1024
#: Bodies at least this large are compressed (when compression is on).
DEFAULT_COMPRESS_ABOVE: Final = 64 * 1024


class UnstorableValue(Exception):
    """A value a shared layer cannot store: the serializer refused it, or it is over the cap.

    The value is still served to its callers (and kept in the in-process layer); the cached
    function counts it in ``stats().unstorable`` and logs the first one.

    Attributes:
        reason: ``"unencodable"`` or ``"too_large"``.
        type_name: the value's type (``module.QualName``).
        size: the serialized size, for ``"too_large"`` (else 0).
    """

    def __init__(self, reason: str, type_name: str, message: str, size: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.type_name = type_name
        self.size = size


def unstorable_warning(source: str, layer: str, exc: UnstorableValue) -> None:
    """Log (once per cached function and layer: the caller sees to that) that a value was
    not stored, naming the function, the type and the fix."""
    logging.getLogger("cacheward").warning(
        "%s: a %s could not be stored in layer %r, so it is cached in this process only "
        "(other processes fetch it themselves): %s. Counted in stats().unstorable; "
        "logged once.",
        source,
        exc.type_name,
        layer,
        exc,
    )


class _Zlib:
    ident = 1
    name = "zlib"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, 1)

    def inflate(self, data: bytes, size: int) -> bytes:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, size)
        if len(out) != size or inflater.unconsumed_tail or not inflater.eof:
            raise PayloadError("corrupt", "compressed body does not inflate to its stated size")
        return out


class _Zstd:
    ident = 2
    name = "zstd"

    def __init__(self) -> None:
        import zstandard

        self._module = zstandard
        self._compressor = zstandard.ZstdCompressor(level=3)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._compressor.compress(data))

    def inflate(self, data: bytes, size: int) -> bytes:
        reader = self._module.ZstdDecompressor().stream_reader(data)
        out = reader.read(size + 1)  # never more than the stated size (plus one, to notice)
        if len(out) != size:
            raise PayloadError("corrupt", "compressed body does not inflate to its stated size")
        return bytes(out)


_ZLIB: Final = _Zlib()
_ZSTD: list[_Zstd] = []


def _zstd() -> _Zstd | None:
    if not _ZSTD:
        try:
            _ZSTD.append(_Zstd())
        except ImportError:
            return None
    return _ZSTD[0]


def compressor(name: str | None) -> _Zlib | _Zstd | None:
    """The compressor for a ``compression=`` setting (``None``, ``"zlib"``, ``"zstd"``,
    ``"auto"``: zstd when ``cacheward[zstd]`` is installed, else zlib).

    Raises:
        ConfigurationError: an unknown name, or ``"zstd"`` without the zstandard package.
    """
    if name is None:
        return None
    if name == "zlib":
        return _ZLIB
    if name in ("zstd", "auto"):
        found = _zstd()
        if found is not None:
            return found
        if name == "auto":
            return _ZLIB
        raise ConfigurationError(
            "compression='zstd' needs the zstandard package: pip install 'cacheward[zstd]'"
        )
    raise ConfigurationError(f"compression must be None, 'zlib', 'zstd' or 'auto', got {name!r}")


def _inflater(ident: int) -> _Zlib | _Zstd:
    if ident == 1:
        return _ZLIB
    if ident == 2:
        found = _zstd()
        if found is None:
            raise PayloadError(
                "foreign", "compressed with zstd; install it: pip install 'cacheward[zstd]'"
            )
        return found
    raise PayloadError("foreign", f"unknown compression {ident}")


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def encode_entry(
    entry: Entry,
    key_text: str,
    serializer: Serializer,
    *,
    token: int = 0,
    max_payload_bytes: int | None = None,
    compression: _Zlib | _Zstd | None = None,
    compress_above: int = DEFAULT_COMPRESS_ABOVE,
) -> bytes:
    """Return the envelope for ``entry`` stored under ``key_text``.

    Args:
        max_payload_bytes: refuse a serialized body larger than this (``None``: no cap).
        compression: compress bodies of at least ``compress_above`` bytes with this (see
            :func:`compressor`), when that makes them smaller.

    Raises:
        UnstorableValue: the serializer cannot encode the value, or it is over the cap.
    """
    try:
        body = serializer.dumps(entry.value)
    except Exception as exc:
        raise UnstorableValue(
            "unencodable", _type_name(entry.value), f"{type(exc).__name__}: {exc}"
        ) from exc
    size = len(body)
    if max_payload_bytes is not None and size > max_payload_bytes:
        raise UnstorableValue(
            "too_large",
            _type_name(entry.value),
            f"its serialized size is {size} bytes, over max_payload_bytes={max_payload_bytes}; "
            "raise max_payload_bytes on the layer, or cache smaller pieces",
            size,
        )
    codec = serializer.codec.encode("ascii")
    key = key_text.encode("utf-8", "surrogatepass")
    signing_key = serializer.signing_key
    flags = FLAG_SIGNED if signing_key is not None else 0
    parts = [b"", codec, key, body]
    if compression is not None and size >= compress_above:
        packed = compression.compress(body)
        if len(packed) + _COMPRESSION.size < size:
            flags |= FLAG_COMPRESSED
            parts[3] = _COMPRESSION.pack(compression.ident, size) + packed
    parts[0] = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        flags,
        len(codec),
        entry.created,
        entry.fresh_until,
        entry.stale_until,
        entry.error_until,
        float(token),
        len(key),
    )
    data = b"".join(parts)
    if signing_key is not None:
        return data + _sign(signing_key, data)
    return data + _CRC.pack(zlib.crc32(data))  # little-endian: see _CRC_RESIDUE


def decode_entry(
    data: bytes,
    key_text: str,
    serializer: Serializer,
    *,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    now: float | None = None,
) -> Entry:
    """Check the envelope and return the entry it holds.

    Nothing reaches ``serializer.loads`` unless the format, codec, key and checksum (or
    signature, when the serializer has a ``signing_key``) are right; a compressed body is
    inflated only if its stated size is within ``max_payload_bytes``, and never past it.

    Args:
        max_payload_bytes: the largest body accepted once inflated (``None``: no limit).
        now: the reader's wall clock; an entry ``created`` more than
            :data:`~cacheward._core.entry.MAX_CLOCK_SKEW` after it is refused.

    Raises:
        PayloadError: the bytes are not a valid entry of ``key_text`` for ``serializer``.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise PayloadError("truncated", f"{size} bytes, shorter than the header")
    (magic, version, flags, codec_len, created, fresh, stale, error, _token, key_len) = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise PayloadError("foreign", "not a cacheward entry")
    if version != FORMAT_VERSION:
        raise PayloadError("foreign", f"format version {version}, this reader knows 1")
    signing_key = serializer.signing_key
    signed = flags & FLAG_SIGNED
    if signing_key is not None and not signed:
        raise PayloadError("foreign", "unsigned entry where a signature is required")
    trailer = _MAC_SIZE if signed else _CRC.size
    key_start = HEADER_SIZE + codec_len
    body_start = key_start + key_len
    if size < body_start + trailer:
        raise PayloadError("truncated", f"{size} bytes, shorter than its declared lengths")
    end = size - trailer
    if signed:
        if signing_key is None:
            raise PayloadError("foreign", "a signed entry; this reader has no signing key")
        if not hmac.compare_digest(_sign(signing_key, data[:end]), data[end:]):
            raise PayloadError("tampered", "HMAC-SHA256 signature does not verify")
    elif zlib.crc32(data) != _CRC_RESIDUE:
        raise PayloadError("corrupt", "checksum mismatch")
    codec = serializer.codec.encode("ascii")
    if codec_len != len(codec) or not data.startswith(codec, HEADER_SIZE):
        found = data[HEADER_SIZE:key_start].decode("ascii", "replace")
        raise PayloadError("foreign", f"codec {found!r}, this reader uses {serializer.codec!r}")
    key = key_text.encode("utf-8", "surrogatepass")
    if key_len != len(key) or not data.startswith(key, key_start):
        raise PayloadError("wrong_key", "entry of another key")
    if not (created <= fresh <= stale <= error < _INF and created > _NINF):
        raise PayloadError("corrupt", "stamps out of order")
    if now is not None and created > now + MAX_CLOCK_SKEW:
        raise PayloadError("corrupt", f"created {created - now:.0f} s in the future")
    if flags & FLAG_COMPRESSED:
        if end - body_start < _COMPRESSION.size:
            raise PayloadError("truncated", "compressed body shorter than its header")
        ident, inflated = _COMPRESSION.unpack_from(data, body_start)
        if max_payload_bytes is not None and inflated > max_payload_bytes:
            raise PayloadError(
                "too_large",
                f"inflates to {inflated} bytes, over max_payload_bytes={max_payload_bytes}",
            )
        try:
            body = _inflater(ident).inflate(data[body_start + _COMPRESSION.size : end], inflated)
        except PayloadError:
            raise
        except Exception as exc:
            raise PayloadError("corrupt", f"cannot inflate: {type(exc).__name__}") from None
    else:
        if max_payload_bytes is not None and end - body_start > max_payload_bytes:
            raise PayloadError(
                "too_large", f"{end - body_start} bytes, over max_payload_bytes={max_payload_bytes}"
            )
        body = data[body_start:end]
    try:
        value = serializer.loads(body)
    except Exception as exc:
        raise PayloadError("undecodable", f"{type(exc).__name__}: {exc}") from None
    return Entry(value, created, fresh, stale, error)


def entry_token(data: bytes) -> int:
    """The fencing token stored in an envelope's header (0 for an unfenced write)."""
    return int(_HEADER.unpack_from(data)[8])


class Envelope:
    """How one shared layer turns entries into bytes and back: a serializer, the size cap, and
    compression. The layer's one call each way (:meth:`encode`, :meth:`decode`).

    Args:
        serializer: see :func:`default_serializer`.
        max_payload_bytes: the cap on a value's serialized size (before compression) for
            writes, and on a body's inflated size for reads (``None``: no cap).
        compression: ``None``, ``"zlib"``, ``"zstd"`` or ``"auto"`` (see :func:`compressor`).
        compress_above: bodies at least this large are compressed.

    Raises:
        ConfigurationError: an invalid setting.
    """

    __slots__ = ("compress_above", "compression", "max_payload_bytes", "serializer")

    def __init__(
        self,
        serializer: Serializer,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        compression: str | None = None,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
    ) -> None:
        self.serializer = serializer
        self.max_payload_bytes = (
            None
            if max_payload_bytes is None
            else check_positive_int("max_payload_bytes", max_payload_bytes)
        )
        self.compression = compressor(compression)
        self.compress_above = check_positive_int("compress_above", compress_above, minimum=0)

    def encode(self, entry: Entry, key_text: str, *, token: int = 0) -> bytes:
        """The envelope (raises :class:`UnstorableValue`)."""
        return encode_entry(
            entry,
            key_text,
            self.serializer,
            token=token,
            max_payload_bytes=self.max_payload_bytes,
            compression=self.compression,
            compress_above=self.compress_above,
        )

    def decode(self, data: bytes, key_text: str, *, now: float | None = None) -> Entry:
        """The entry (raises :class:`PayloadError`)."""
        return decode_entry(
            data, key_text, self.serializer, max_payload_bytes=self.max_payload_bytes, now=now
        )


def default_serializer() -> Serializer:
    """:class:`~cacheward.MsgpackSerializer` (exact Python types; msgspec is a dependency)."""
    from cacheward._msgpack import MsgpackSerializer

    return MsgpackSerializer()


def entry_stamps(data: bytes) -> tuple[float, float] | None:
    """An envelope's ``created`` stamp and fencing token, or ``None`` if it is not one."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC or data[1] != FORMAT_VERSION:
        return None
    fields = _HEADER.unpack_from(data)
    return float(fields[4]), float(fields[8])
