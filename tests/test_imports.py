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
