"""The public API types as users see them: mypy accepts right use and rejects wrong use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_right_use_type_checks() -> None:
    result = mypy(ROOT / "tests" / "typing" / "api.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_use_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        textwrap.dedent(
            """
            import cacheward as cw

            @cw.cached(ttl=60)
            def load(customer_id: str) -> dict[str, str]:
                return {}

            @cw.cached(ttl=60)
            async def aload(customer_id: str) -> int:
                return 1

            load(1)
            wrong: int = load("a")
            async def main() -> None:
                n: str = await aload("a")
            """
        )
    )
    result = mypy(bad)
    assert result.returncode == 1
    assert 'incompatible type "int"; expected "str"' in result.stdout
    assert 'expression has type "dict[str, str]", variable has type "int"' in result.stdout
    assert 'expression has type "int", variable has type "str"' in result.stdout


def test_wrong_use_of_methods_and_write_through_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad_methods.py"
    bad.write_text(
        textwrap.dedent(
            """
            import cacheward as cw

            class Repo:
                @cw.cached(ttl=60)
                def load(self, customer_id: str) -> int:
                    return 1

            Repo().load(1)
            Repo().load.invalidate(2)
            Repo().load.set("x", "c")
            wrong: str = Repo().load.refresh("c")
            maybe: int = Repo().load.get("c")
            """
        )
    )
    result = mypy(bad)
    assert result.returncode == 1
    out = result.stdout
    assert 'Argument 1 to "__call__" of "CachedFunction" has incompatible type "int"' in out
    assert 'Argument 1 to "invalidate" of "CachedFunction" has incompatible type "int"' in out
    assert 'Argument 1 to "set" of "CachedFunction" has incompatible type "str"' in out
    assert 'expression has type "int", variable has type "str"' in out
    assert 'expression has type "int | Missing", variable has type "int"' in out
    assert out.count("error:") == 5, out
