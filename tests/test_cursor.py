"""Keyset cursors: round trips, signatures, and garbage that must be a clear error."""

from __future__ import annotations

import base64
import datetime
import decimal
import hmac
import json
import uuid
from typing import Any

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward import _cursor

SECRET = "s3cret-s3cret-s3cret"  # noqa: S105 - a test key

key_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=16),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.uuids(),
)
sort_keys = st.lists(key_values, min_size=1, max_size=4).map(tuple)


def check_round_trip(codec: cw.CursorCodec, key: tuple[Any, ...]) -> None:
    cursor = codec.encode(key)
    assert cursor.isascii()
    assert all(c.isalnum() or c in "-_." for c in cursor)  # URL-safe as is
    decoded = codec.decode(cursor)
    assert decoded == key
    assert [type(v) for v in decoded] == [type(v) for v in key]


@given(sort_keys, st.booleans())
def test_property_cursors_round_trip_with_their_types(key: tuple[Any, ...], signed: bool) -> None:
    check_round_trip(cw.CursorCodec(secret=SECRET if signed else None), key)


def test_property_search_catches_a_lossy_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cursor, "_pack", lambda v: v if isinstance(v, str) else str(v))

    @settings(max_examples=200, database=None, derandomize=True, phases=[Phase.generate])
    @given(sort_keys)
    def broken(key: tuple[Any, ...]) -> None:
        check_round_trip(cw.CursorCodec(), key)

    with pytest.raises(AssertionError):
        broken()


def check_tamper_rejected(codec: cw.CursorCodec, key: tuple[Any, ...], pos: int, ch: str) -> None:
    cursor = codec.encode(key)
    i = pos % len(cursor)
    forged = cursor[:i] + ch + cursor[i + 1 :]
    if forged == cursor:
        return
    with pytest.raises(cw.InvalidCursor):
        codec.decode(forged)


b64_chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@given(sort_keys, st.integers(0, 10_000), b64_chars)
def test_property_any_edit_of_a_signed_cursor_is_rejected(
    key: tuple[Any, ...], pos: int, ch: str
) -> None:
    check_tamper_rejected(cw.CursorCodec(secret=SECRET, scope="config"), key, pos, ch)


def test_property_search_catches_a_codec_that_skips_the_signature_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: True)

    @settings(max_examples=300, database=None, derandomize=True, phases=[Phase.generate])
    @given(sort_keys, st.integers(0, 10_000), b64_chars)
    def broken(key: tuple[Any, ...], pos: int, ch: str) -> None:
        check_tamper_rejected(cw.CursorCodec(secret=SECRET, scope="config"), key, pos, ch)

    with pytest.raises((AssertionError, pytest.fail.Exception)):
        broken()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=6,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


garbage = st.one_of(
    st.text(max_size=60),
    json_values.map(lambda v: "c1." + _b64(json.dumps(v).encode())),
    st.dictionaries(
        st.sampled_from(["dt", "da", "tm", "dec", "uuid", "b", "x"]),
        st.text(max_size=12),
        min_size=1,
        max_size=1,
    ).map(lambda d: "c1." + _b64(json.dumps([d]).encode())),
    st.binary(max_size=40).map(lambda b: "c1." + _b64(b)),
)


#: Unsigned cursors whose JSON holds a float that ``encode`` refuses (``json`` parses them).
NON_FINITE = [
    "c1." + _b64(text.encode())
    for text in ("[1e999]", "[NaN]", "[-Infinity]", '[1, "a", -1e400]', "[Infinity]")
]


def check_garbage(cursor: str) -> None:
    """Any string decodes to a key the codec could have issued, or raises InvalidCursor."""
    codec = cw.CursorCodec()
    try:
        key = codec.decode(cursor)
    except cw.InvalidCursor:
        return
    assert isinstance(key, tuple)
    assert codec.decode(codec.encode(key)) == key  # encode() accepts what decode() returned


@example(NON_FINITE[0])
@example(NON_FINITE[1])
@given(garbage)
def test_property_garbage_is_invalid_cursor_never_a_crash(cursor: str) -> None:
    check_garbage(cursor)


def test_unsigned_and_signed_cursors_refuse_floats_that_encoding_refuses() -> None:
    for cursor in NON_FINITE:
        with pytest.raises(cw.InvalidCursor, match="garbled"):
            cw.CursorCodec().decode(cursor)
    # A validly signed cursor holding 1e999 (a secret that leaked, or an old encoder) too.
    signed = cw.CursorCodec(secret=SECRET)
    payload = NON_FINITE[0].split(".")[1]
    forged = f"{NON_FINITE[0]}.{signed._mac(SECRET.encode(), payload)}"
    with pytest.raises(cw.InvalidCursor, match="garbled"):
        signed.decode(forged)


def test_the_garbage_check_catches_a_decoder_that_lets_non_finite_floats_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = _cursor._unpack

    def unchecked(value: object) -> object:
        return value if isinstance(value, float) else checked(value)

    monkeypatch.setattr(_cursor, "_unpack", unchecked)
    for cursor in NON_FINITE:  # deterministic: the examples, not a random search
        with pytest.raises(cw.ConfigurationError, match="cannot hold the float"):
            check_garbage(cursor)


def test_property_search_catches_unchecked_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    def unchecked(value: object) -> object:
        if isinstance(value, dict):
            ((tag, text),) = value.items()
            return _cursor._UNPACK[tag](text)  # KeyError on an unknown tag escapes
        return value

    monkeypatch.setattr(_cursor, "_unpack", unchecked)

    @settings(max_examples=300, database=None, derandomize=True, phases=[Phase.generate])
    @given(garbage)
    def broken(cursor: str) -> None:
        check_garbage(cursor)

    with pytest.raises((KeyError, ValueError)):
        broken()


def test_examples_of_bad_cursors_name_the_problem() -> None:
    signed = cw.CursorCodec(secret=SECRET, scope="config", arity=2)
    good = signed.encode(("name", 7))
    assert signed.decode(good) == ("name", 7)
    other = cw.CursorCodec(secret=SECRET[::-1], scope="config")
    cases = {
        "": "garbled or truncated",
        "hello": "garbled or truncated",
        good[:-3]: "signature does not match",
        cw.CursorCodec().encode(("name", 7)): "requires a signature",
        cw.CursorCodec(secret=SECRET, scope="users").encode(("name", 7)): "another scope",
        other.encode(("name", 7)): "another secret",
        "c1." + "A" * 5000: "max_length",
    }
    for bad, message in cases.items():
        with pytest.raises(cw.InvalidCursor, match=message):
            signed.decode(bad)
    with pytest.raises(cw.InvalidCursor, match="expected 2"):
        cw.CursorCodec(arity=2).decode(cw.CursorCodec().encode((1, 2, 3)))
    with pytest.raises(cw.InvalidCursor, match="must be a str"):
        signed.decode(7)  # type: ignore[call-overload]
    assert signed.decode(None) is None
    assert isinstance(cw.InvalidCursor("x"), ValueError)


def test_construction_and_encoding_errors() -> None:
    with pytest.raises(cw.ConfigurationError, match="at least 16 bytes"):
        cw.CursorCodec(secret="short")  # noqa: S106 - too short on purpose
    with pytest.raises(cw.ConfigurationTypeError):
        cw.CursorCodec(secret=123)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError):
        cw.CursorCodec(arity=0)
    codec = cw.CursorCodec(arity=2)
    with pytest.raises(cw.ConfigurationError, match="arity=2"):
        codec.encode((1,))
    with pytest.raises(cw.ConfigurationTypeError, match="tuple"):
        codec.encode("ab")
    with pytest.raises(cw.ConfigurationTypeError, match="object"):
        codec.encode((object(), 1))
    with pytest.raises(cw.ConfigurationError):
        codec.encode((float("nan"), 1))
    with pytest.raises(cw.ConfigurationError, match="max_length"):
        cw.CursorCodec(max_length=32).encode(("x" * 100,))


def test_page_builds_the_next_cursor_from_the_last_row() -> None:
    codec = cw.CursorCodec()
    rows = [("a", 1), ("b", 2), ("c", 3)]
    # LIMIT limit + 1 (the default): the look-ahead row says there is more, and is left out
    page = codec.page(rows, 2, key=lambda r: r)
    assert page.items == rows[:2]
    assert page.next_cursor is not None
    assert codec.decode(page.next_cursor) == ("b", 2)
    assert codec.page(rows, 3, key=lambda r: r) == cw.Page(rows, None)
    assert codec.page(rows, 4, key=lambda r: r) == cw.Page(rows, None)
    # LIMIT limit: a full page may have a next one
    page = codec.page(rows, 3, key=lambda r: r, lookahead=False)
    assert page.items == rows
    assert page.next_cursor is not None
    assert codec.decode(page.next_cursor) == ("c", 3)
    assert codec.page(rows, 4, key=lambda r: r, lookahead=False) == cw.Page(rows, None)
    assert codec.page([], 4, key=lambda r: r) == cw.Page([], None)
    assert codec.page([], 4, key=lambda r: r, lookahead=False) == cw.Page([], None)


def test_typed_values_survive() -> None:
    codec = cw.CursorCodec(secret=SECRET)
    key = (
        datetime.datetime(2026, 11, 27, 13, 0, tzinfo=datetime.timezone.utc),
        decimal.Decimal("1.50"),
        uuid.UUID(int=5),
        b"\x00\xff",
        None,
        True,
        1.5,
    )
    assert codec.decode(codec.encode(key)) == key
