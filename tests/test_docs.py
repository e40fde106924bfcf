"""Every ``python`` code block in the README and the docs runs as written.

Blocks that are not meant to run (signatures, shell commands, output) use another language tag
(``text``, ``bash``). A block needing a service carries a first-line comment
``# needs: redis`` or ``# needs: postgres`` and runs only where that service is available.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in FILES:
        text = path.read_text()
        for number, match in enumerate(BLOCK.finditer(text), start=1):
            found.append((f"{path.relative_to(ROOT)}#{number}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_code_block_runs(where: str, code: str, request: pytest.FixtureRequest) -> None:
    first = code.splitlines()[0] if code else ""
    if first.startswith("# needs: redis"):
        request.getfixturevalue("redis_url")
    if first.startswith("# needs: postgres"):
        request.getfixturevalue("database_url")
    namespace: dict[str, object] = {"__name__": f"docs_block_{abs(hash(where))}"}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - our own documentation
