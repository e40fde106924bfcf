"""The public API types under pyright too: right use passes strict mode, wrong use is rejected.

pyright runs on Node.js: the ``pyright`` package from the test extra uses the ``node`` on
``PATH`` (this machine kind has one); without it the test skips (or fails in CI).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from conftest import needs

ROOT = Path(__file__).resolve().parent.parent


def pyright(*paths: Path, cwd: Path) -> dict[str, Any]:
    if shutil.which("node") is None:
        needs("node", "pyright runs on Node.js and no `node` is on PATH")
    beside = Path(sys.executable).parent / "pyright"
    exe = str(beside) if beside.exists() else shutil.which("pyright")
    if exe is None:
        needs("pyright", "the pyright package is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [exe, "--outputjson", "--pythonpath", sys.executable, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_right_use_passes_strict_mode() -> None:
    report = pyright(ROOT / "tests" / "typing" / "api.py", cwd=ROOT)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert errors == []
    assert report["summary"]["filesAnalyzed"] == 1


def test_wrong_use_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "pyrightconfig.json").write_text('{"strict": ["bad.py"]}')
    bad = tmp_path / "bad.py"
    bad.write_text(
        textwrap.dedent(
            """
            import cacheward as cw

            @cw.cached(ttl=60)
            def load(customer_id: str) -> dict[str, str]:
                return {}

            @cw.guard(ttl=60)
            async def aload(customer_id: str) -> int:
                return 1

            load(1)
            wrong: int = load("a")
            async def main() -> None:
                n: str = await aload("a")
                print(n)
            """
        )
    )
    report = pyright(bad, cwd=tmp_path)
    lines = sorted(d["range"]["start"]["line"] + 1 for d in report["generalDiagnostics"])
    # load(1), wrong: int = ..., n: str = await ... (lines in the dedented file).
    assert lines == [12, 13, 15], report["generalDiagnostics"]


def test_wrong_use_of_methods_and_write_through_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "pyrightconfig.json").write_text('{"strict": ["bad.py"]}')
    bad = tmp_path / "bad.py"
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
    report = pyright(bad, cwd=tmp_path)
    lines = sorted(d["range"]["start"]["line"] + 1 for d in report["generalDiagnostics"])
    # The five calls at the end (lines 9-13 of the dedented file).
    assert lines == [9, 10, 11, 12, 13], report["generalDiagnostics"]
