"""What ``import cacheward`` loads: asyncio and tenacity only when a program uses them."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Loaded at first use (an ``async def`` decorated, a retry after a failure), never at import.
LAZY = ("asyncio", "tenacity")


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    )
    return set(out.stdout.split())


def test_import_cacheward_loads_neither_asyncio_nor_tenacity() -> None:
    loaded = loaded_after("import cacheward")
    assert "cacheward" in loaded
    assert not loaded & set(LAZY), sorted(loaded & set(LAZY))


@pytest.mark.parametrize("lazy", LAZY)
def test_the_check_sees_a_module_that_is_loaded(lazy: str) -> None:
    # The sibling that can fail: the same probe notices the module once something imports it.
    assert lazy in loaded_after(f"import cacheward\nimport {lazy}")


def test_a_sync_retry_that_fails_loads_tenacity_then() -> None:
    loaded = loaded_after(
        "import cacheward as cw\n"
        "calls = []\n"
        "@cw.retry(attempts=2, backoff=0.001, backoff_max=0.001)\n"
        "def f():\n"
        "    calls.append(1)\n"
        "    if len(calls) == 1:\n"
        "        raise ConnectionError('once')\n"
        "    return 1\n"
        "assert f() == 1 and len(calls) == 2\n"
    )
    assert "tenacity" in loaded
    assert "asyncio" not in loaded


#: What a program that only caches in memory does not pay for: the optional subsystems are
#: imported when their public name is first used, and the standard library's value types,
#: URL parsing and random numbers when cacheward first needs them.
DEFERRED = (
    "cacheward._redis",
    "cacheward._adaptive",
    "cacheward._pages",
    "cacheward._guard",
    "urllib.parse",
    "uuid",
    "decimal",
    "random",
)


def test_import_cacheward_defers_the_optional_subsystems() -> None:
    loaded = loaded_after("import cacheward")
    assert not loaded & set(DEFERRED), sorted(loaded & set(DEFERRED))


def test_the_first_use_of_a_deferred_name_imports_it() -> None:
    # The sibling that can fail: the names still resolve, and the probe sees their modules.
    loaded = loaded_after(
        "import cacheward as cw\n"
        "assert cw.RedisLayer.__module__ == 'cacheward._redis'\n"
        "assert 'AdaptiveLimit' in dir(cw) and cw.AdaptiveLimit is not None\n"
        "@cw.cached(ttl=1)\n"
        "def f(x):\n"
        "    return x\n"
        "import uuid, decimal\n"
        "assert f(uuid.UUID(int=1)) == uuid.UUID(int=1) and f(decimal.Decimal('1.5'))\n"
    )
    assert {"cacheward._redis", "cacheward._adaptive", "random", "uuid"} <= loaded


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import cacheward

    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        cacheward.NoSuchName  # noqa: B018


def test_every_public_name_resolves_and_the_lazy_table_is_public() -> None:
    """After a merge that adds names: each lazy name is public and comes from its module."""
    import importlib

    import cacheward

    lazy = cacheward._LAZY
    assert set(lazy) <= set(cacheward.__all__), sorted(set(lazy) - set(cacheward.__all__))
    for name in cacheward.__all__:
        value = getattr(cacheward, name)
        if name in lazy:
            assert value is getattr(importlib.import_module(lazy[name]), name), name
