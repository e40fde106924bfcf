"""The decorator misuses a new user makes fail at decoration, saying exactly what to write."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import cacheward as cw


def load(customer_id: str) -> str:
    return customer_id


def test_bare_cached_says_what_to_write() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=r"write @cw\.cached\(ttl=60\) above load"):
        cw.cached(load)  # type: ignore[call-arg, misc]


def test_positional_ttl_says_to_name_it() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=r"as keywords: write cw\.cached\(ttl=60\)"):
        cw.cached(60)  # type: ignore[call-arg, misc]


def test_missing_ttl_names_it() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=r"needs ttl"):
        cw.cached()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("factory", "expected"),
    [(cw.guard, r"@cw\.guard\(ttl=60"), (cw.coalesce, r"@cw\.coalesce\(\) above load")],
)
def test_bare_guard_and_coalesce(factory: Any, expected: str) -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=expected):
        factory(load)


def test_the_signature_is_unchanged_for_inspect() -> None:
    params = inspect.signature(cw.cached).parameters
    assert params["ttl"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "stale_if_error" in params


@pytest.mark.parametrize("decorator", [cw.cached, cw.guard])
def test_stale_if_error_shorter_than_stale_ttl_is_refused(decorator: Any) -> None:
    with pytest.raises(cw.ConfigurationError, match=r"stale_if_error=60 is shorter than stale_ttl"):
        decorator(ttl=10, stale_ttl=600, stale_if_error=60)


@pytest.mark.parametrize("stale_if_error", [None, 600, 3600])
def test_stale_if_error_at_least_stale_ttl_is_accepted(stale_if_error: Any) -> None:
    fetch = cw.cached(ttl=10, stale_ttl=600, stale_if_error=stale_if_error)(load)
    assert fetch("a") == "a"
