"""Serializers and the entry envelope: what round-trips, and that bad bytes are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import pickle
import struct
import types
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheward import MsgpackSerializer, _serialize
from cacheward._core.entry import Entry
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._serialize import (
    HEADER_SIZE,
    JsonSerializer,
    MsgspecSerializer,
    OrjsonSerializer,
    PayloadError,
    PickleSerializer,
    Serializer,
    decode_entry,
    encode_entry,
    entry_token,
)

KEY = b"k" * 32
KEY_TEXT = "ns:v1:tests.fn:00112233445566778899aabbccddeeff"
NOW = 1_800_000_000.0

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def entry(value: Any, created: float = NOW) -> Entry:
    return Entry(value, created, created + 10, created + 20, created + 30)


def serializers() -> list[Serializer]:
    # Every codec, signed and not: the envelope rules (checksum or signature, key, codec,
    # "forged bytes are a miss, never executed") are tested on each.
    return [
        MsgpackSerializer(),
        MsgpackSerializer(signing_key=KEY),
        JsonSerializer(),
        JsonSerializer(signing_key=KEY),
        OrjsonSerializer(),
        MsgspecSerializer(),
        PickleSerializer(key=KEY),
    ]


@pytest.mark.parametrize("serializer", serializers(), ids=repr)
@given(value=json_values)
def test_json_values_round_trip_through_every_serializer(
    serializer: Serializer, value: Any
) -> None:
    stored = entry(value)
    back = decode_entry(encode_entry(stored, KEY_TEXT, serializer), KEY_TEXT, serializer)
    assert back == stored


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1: "a"}, {"a": (1,)}, float("nan"), float("inf"), b"bytes", {1, 2}, object()],
    ids=repr,
)
def test_strict_json_refuses_what_would_not_come_back_unchanged(value: Any) -> None:
    for serializer in (JsonSerializer(), OrjsonSerializer()):
        with pytest.raises(TypeError):
            serializer.dumps(value)


def test_strict_json_refuses_subclasses_and_deep_nesting() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(TypeError):
        JsonSerializer().dumps(Color.RED)
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(TypeError):
        JsonSerializer().dumps(deep)


def test_lenient_json_stores_what_json_accepts_and_changes_its_shape() -> None:
    lenient = JsonSerializer(strict=False)
    stored = entry({"t": (1, 2)})
    back = decode_entry(encode_entry(stored, KEY_TEXT, lenient), KEY_TEXT, lenient)
    assert back.value == {"t": [1, 2]}


def test_json_and_orjson_read_each_other() -> None:
    stored = entry({"a": [1, 2.5, "é", None, True]})
    data = encode_entry(stored, KEY_TEXT, OrjsonSerializer())
    assert decode_entry(data, KEY_TEXT, JsonSerializer()) == stored
    data = encode_entry(stored, KEY_TEXT, JsonSerializer())
    assert decode_entry(data, KEY_TEXT, OrjsonSerializer()) == stored


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_msgspec_with_a_type_round_trips_that_type() -> None:
    serializer = MsgspecSerializer(type=list[Point])
    stored = entry([Point(1, 2), Point(3, 4)])
    assert decode_entry(encode_entry(stored, KEY_TEXT, serializer), KEY_TEXT, serializer) == stored
    # Bytes of another shape are a miss, not a half-valid object.
    other = encode_entry(entry([1, 2]), KEY_TEXT, MsgspecSerializer())
    with pytest.raises(PayloadError) as info:
        decode_entry(other, KEY_TEXT, serializer)
    assert info.value.reason == "undecodable"


def test_pickle_round_trips_any_picklable_value() -> None:
    serializer = PickleSerializer(key=KEY)
    stored = entry({"t": (1, 2), "s": frozenset({3}), "p": Point(1, 2), "b": b"x"})
    assert decode_entry(encode_entry(stored, KEY_TEXT, serializer), KEY_TEXT, serializer) == stored


def test_pickle_needs_a_real_key() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        PickleSerializer(key=b"short")
    with pytest.raises(ConfigurationTypeError):
        PickleSerializer(key="a string key of more than thirty-two chars")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PickleSerializer()  # type: ignore[call-arg]


EXECUTED: list[str] = []


def _record(tag: str) -> None:
    EXECUTED.append(tag)


class Exploit:
    """Unpickling this calls _record: stands in for arbitrary code execution."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("pwned",))


def test_forged_pickle_is_refused_before_unpickling() -> None:
    EXECUTED.clear()
    reader = PickleSerializer(key=KEY)
    # Signed with the wrong key: tampered.
    forged = encode_entry(entry(Exploit()), KEY_TEXT, PickleSerializer(key=b"x" * 32))
    with pytest.raises(PayloadError) as info:
        decode_entry(forged, KEY_TEXT, reader)
    assert info.value.reason == "tampered"
    # Not signed at all (a CRC instead), with the pickle codec id: refused as foreign.
    unsigned = _unsigned_with_codec(entry(Exploit()), "pickle")
    with pytest.raises(PayloadError) as info:
        decode_entry(unsigned, KEY_TEXT, reader)
    assert info.value.reason == "foreign"
    # A signature with a flipped body byte: tampered.
    good = bytearray(encode_entry(entry(Exploit()), KEY_TEXT, reader))
    good[-40] ^= 0x01
    with pytest.raises(PayloadError):
        decode_entry(bytes(good), KEY_TEXT, reader)
    assert EXECUTED == []
    # The control: correctly signed, it does unpickle (so the checks above are what stopped it).
    decode_entry(encode_entry(entry(Exploit()), KEY_TEXT, reader), KEY_TEXT, reader)
    assert EXECUTED == ["pwned"]


def _unsigned_with_codec(stored: Entry, codec: str) -> bytes:
    class Raw:
        signing_key = None

        def __init__(self) -> None:
            self.codec = codec

        def dumps(self, value: Any) -> bytes:
            return pickle.dumps(value)

        def loads(self, data: bytes) -> Any:  # pragma: no cover - never called
            raise AssertionError

    return encode_entry(stored, KEY_TEXT, Raw())


def test_a_signed_payload_is_foreign_to_a_reader_without_the_key() -> None:
    data = encode_entry(entry(1), KEY_TEXT, PickleSerializer(key=KEY))
    with pytest.raises(PayloadError) as info:
        decode_entry(data, KEY_TEXT, JsonSerializer())
    assert info.value.reason == "foreign"


def test_the_algorithm_is_fixed_by_the_reader() -> None:
    # A payload "signed" with MD5 (or any other algorithm) never verifies: the reader always
    # computes HMAC-SHA256, whatever the bytes claim.
    data = encode_entry(entry(1), KEY_TEXT, PickleSerializer(key=KEY))[:-32]
    md5 = hmac.new(KEY, data, hashlib.md5).digest()
    with pytest.raises(PayloadError) as info:
        decode_entry(data + md5 + b"\0" * 16, KEY_TEXT, PickleSerializer(key=KEY))
    assert info.value.reason == "tampered"


def test_other_keys_codecs_and_versions_are_refused() -> None:
    json = JsonSerializer()
    data = encode_entry(entry({"a": 1}), KEY_TEXT, json)
    with pytest.raises(PayloadError) as info:
        decode_entry(data, KEY_TEXT + "x", json)
    assert info.value.reason == "wrong_key"
    with pytest.raises(PayloadError) as info:
        decode_entry(data, KEY_TEXT, MsgspecSerializer())
    assert info.value.reason == "foreign"
    future = bytearray(data[:-4])
    future[1] = 2  # a later format version, with a valid checksum
    future += struct.pack("<I", zlib.crc32(bytes(future)))
    with pytest.raises(PayloadError) as info:
        decode_entry(bytes(future), KEY_TEXT, json)
    assert info.value.reason == "foreign"
    with pytest.raises(PayloadError) as info:
        decode_entry(b"plain old string", KEY_TEXT, json)
    assert info.value.reason == "truncated"
    with pytest.raises(PayloadError) as info:
        decode_entry(b"x" * 100, KEY_TEXT, json)
    assert info.value.reason == "foreign"


def test_stamps_out_of_order_are_corrupt() -> None:
    bad = Entry(1, NOW, NOW + 10, NOW + 5, NOW + 30)
    data = encode_entry(bad, KEY_TEXT, JsonSerializer())
    with pytest.raises(PayloadError) as info:
        decode_entry(data, KEY_TEXT, JsonSerializer())
    assert info.value.reason == "corrupt"


def test_header_offsets_match_the_lua_scripts() -> None:
    data = encode_entry(entry(1, created=NOW + 0.5), KEY_TEXT, JsonSerializer(), token=42)
    assert HEADER_SIZE == 48
    assert data[0] == 0xC7
    assert data[1] == 1
    assert struct.unpack_from(">d", data, 4)[0] == NOW + 0.5  # Lua: struct.unpack('>d', v, 5)
    assert struct.unpack_from(">d", data, 36)[0] == 42.0  # Lua: struct.unpack('>d', v, 37)
    assert entry_token(data) == 42


# --- damaged bytes: a miss, never an exception of another kind, never another value -------------


def _check_damage(serializer: Serializer, value: Any, cut: int, flip: int, mask: int) -> None:
    stored = entry(value)
    data = encode_entry(stored, KEY_TEXT, serializer)
    truncated = data[: cut % len(data)]
    with pytest.raises(PayloadError):
        decode_entry(truncated, KEY_TEXT, serializer)
    damaged = bytearray(data)
    damaged[flip % len(data)] ^= mask
    try:
        back = decode_entry(bytes(damaged), KEY_TEXT, serializer)
    except PayloadError:
        return
    assert back == stored, "a damaged payload decoded to a different entry"


damage = {
    "value": json_values,
    "cut": st.integers(min_value=0),
    "flip": st.integers(min_value=0),
    "mask": st.integers(min_value=1, max_value=255),
}


@pytest.mark.parametrize("serializer", serializers(), ids=repr)
@given(**damage)
def test_truncated_or_flipped_bytes_are_a_payload_error(
    serializer: Serializer, value: Any, cut: int, flip: int, mask: int
) -> None:
    _check_damage(serializer, value, cut, flip, mask)


def test_without_the_checksum_damage_goes_unnoticed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Switch the mechanism off (a checksum that always verifies): Hypothesis then finds a
    # damaged payload that decodes to another value, so the property above is not vacuous.
    residue = _serialize._CRC_RESIDUE
    monkeypatch.setattr(_serialize, "zlib", types.SimpleNamespace(crc32=lambda *_: residue))

    @settings(
        max_examples=500,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(value=st.integers(min_value=0, max_value=9), flip=st.integers(min_value=0))
    def prop(value: int, flip: int) -> None:
        _check_damage(JsonSerializer(), value, 1, flip, 0x01)

    with pytest.raises(AssertionError, match="different entry"):
        prop()
