"""Keys: two calls share a key exactly when their arguments are equal with equal types."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cacheward import CacheKey, ConfigurationTypeError
from cacheward._core.keys import encode_call, local_key

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.lists(inner, max_size=3).map(tuple), st.frozensets(scalars)
    ),
    max_leaves=8,
)
# Calls that untyped or unframed encodings confuse: generated pairs drawn from this pool meet
# the hard cases every time, where two independent random calls would almost never collide.
CONFUSABLE = [
    ((1,), {}),
    (("1",), {}),
    ((1.0,), {}),
    ((True,), {}),
    ((b"1",), {}),
    (("a b",), {}),
    (("a", "b"), {}),
    (((1, 2),), {}),
    ((1, 2), {}),
    ((None,), {}),
    (("None",), {}),
    (((),), {}),
    ((), {}),
    ((), {"x": 1}),
    ((1,), {"x": 1}),
    ((frozenset({1}),), {}),
    (((1,),), {}),
    ((0.0,), {}),
    ((-0.0,), {}),
    ((0,), {}),
    ((False,), {}),
]
confusable = st.sampled_from(CONFUSABLE)
calls = st.tuples(
    st.lists(values, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=3), values, max_size=2),
)


def typed_equal(a: Any, b: Any) -> bool:
    """Equality that also demands equal types, recursively (and tells -0.0 from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, frozenset):
        return len(a) == len(b) and all(any(typed_equal(x, y) for y in b) for x in a)
    if isinstance(a, float):
        return a.hex() == b.hex()
    return bool(a == b)


def calls_equal(one: Any, two: Any) -> bool:
    (args1, kw1), (args2, kw2) = one, two
    return (
        typed_equal(args1, args2)
        and kw1.keys() == kw2.keys()
        and all(typed_equal(kw1[k], kw2[k]) for k in kw1)
    )


def check_injective(
    encode: Callable[[tuple[Any, ...], dict[str, Any]], Any], one: Any, two: Any
) -> None:
    assert (encode(*one) == encode(*two)) == calls_equal(one, two)


@given(st.one_of(calls, confusable), st.one_of(calls, confusable))
def test_encoding_is_typed_and_injective(one: Any, two: Any) -> None:
    check_injective(lambda a, k: encode_call(a, k, ()), one, two)


@given(calls)
def test_encoding_is_deterministic(call: Any) -> None:
    args, kwargs = call
    assert encode_call(args, kwargs, ()) == encode_call(args, dict(reversed(kwargs.items())), ())


@given(st.one_of(calls, confusable), st.one_of(calls, confusable))
def test_local_keys_agree_with_the_encoding(one: Any, two: Any) -> None:
    check_injective(lambda a, k: local_key(a, k, ()), one, two)


def test_the_injectivity_check_catches_an_untyped_encoding() -> None:
    """Sibling: an encoding that joins ``str()`` of the arguments must be caught."""

    def naive(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return " ".join(map(str, args)) + repr(sorted(kwargs.items()))

    # The collision every untyped encoding has, pinned: a random search found one only about
    # eleven runs in twelve. The derandomized search still runs after it.
    @settings(database=None, max_examples=500, derandomize=True)
    @example(((1,), {}), (("1",), {}))
    @given(st.one_of(calls, confusable), st.one_of(calls, confusable))
    @example((("a b",), {}), (("a", "b"), {}))  # found every run, not by random search
    def prop(one: Any, two: Any) -> None:
        check_injective(naive, one, two)

    with pytest.raises(AssertionError):
        prop()


def test_examples_from_the_design() -> None:
    def enc(*args: Any, **kwargs: Any) -> bytes:
        return encode_call(args, kwargs, ())

    assert enc(1) != enc("1")
    assert enc(1) != enc(1.0) != enc(True)
    assert enc("a b") != enc("a", "b")
    assert enc(x=1) != enc(1)
    assert local_key((1,), {}, ()) != local_key((True,), {}, ())
    assert local_key(("a",), {}, ()) == "a"
    assert local_key(("a", 1), {}, ()) == ("a", 1)


class Color(enum.Enum):
    RED = 1


def test_supported_rich_types_encode_stably() -> None:
    samples = [
        Color.RED,
        uuid.UUID(int=5),
        decimal.Decimal("1.10"),
        datetime.date(2026, 1, 2),
        datetime.datetime(2026, 1, 2, 3, 4, 5),
        datetime.time(1, 2),
        datetime.timedelta(days=1, seconds=2),
    ]
    encodings = [encode_call((s,), {}, ()) for s in samples]
    assert len(set(encodings)) == len(samples)
    assert encodings == [encode_call((s,), {}, ()) for s in samples]


def test_unsupported_types_name_the_argument() -> None:
    with pytest.raises(ConfigurationTypeError, match=r"'ids' is a list, which is unhashable"):
        encode_call(([1],), {}, ("ids",))
    with pytest.raises(ConfigurationTypeError, match=r"'opts' is a dict"):
        encode_call((), {"opts": {}}, ())
    with pytest.raises(ConfigurationTypeError, match=r"'svc' has type object.*key="):
        encode_call((object(),), {}, ("svc",))


def test_text_key_is_stable_and_bounded() -> None:
    key = CacheKey("a", "app.fetch:v1", ("a",), {}, ("customer",))
    assert key.text == CacheKey("a", "app.fetch:v1", ("a",), {}, ()).text
    assert key.text.startswith("app.fetch:v1:")
    assert len(key.text.split(":")[-1]) == 32
