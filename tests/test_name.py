"""The library's former name must not come back: on the package index it belongs to someone else.

``pip install <old name>`` installs an unrelated project, so any doc, message or extra that still
says it is a supply-chain trap. Only ``CHANGELOG.md`` may mention it (the entry that says why it
is gone).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Spelled in two halves so that this file does not contain the word it looks for.
OLD_NAME = re.compile("cache" + "guard", re.IGNORECASE)
ALLOWED = {"CHANGELOG.md"}
# Directories that are not the project's own text (virtual environments, caches, build output).
SKIP_DIRS = {".git", "node_modules", "site", "dist", "build", "__pycache__"}


def tracked_files(root: Path) -> list[Path]:
    """The files of the tree: git's list when it is a checkout, else a walk (an sdist)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return [
            path
            for path in root.rglob("*")
            if path.is_file()
            and not any(
                part in SKIP_DIRS or part.startswith((".venv", ".mypy", ".ruff", ".pytest", ".hyp"))
                for part in path.relative_to(root).parts
            )
        ]
    return [root / name for name in out.decode().split("\0") if name]


def mentions(root: Path, files: list[Path]) -> list[str]:
    """``path:line`` of every mention of the old name outside the allowed files."""
    found = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel in ALLOWED or not path.is_file():
            continue
        if OLD_NAME.search(rel):
            found.append(f"{rel} (its path)")
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            # Binary files (the plot): search their bytes too, a PNG's text chunks can hold it.
            text = path.read_bytes().decode("latin-1")
        found.extend(
            f"{rel}:{text.count(chr(10), 0, match.start()) + 1}"
            for match in OLD_NAME.finditer(text)
        )
    return found


def test_the_old_name_appears_only_in_the_changelog() -> None:
    found = mentions(ROOT, tracked_files(ROOT))
    assert not found, "the old name reappeared (use cacheward): " + ", ".join(found[:20])


def test_the_check_finds_a_mention(tmp_path: Path) -> None:
    """The sibling: a tree with one mention in a doc and one in a path is caught."""
    (tmp_path / "CHANGELOG.md").write_text("renamed from " + "Cache" + "Guard\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("ok\npip install " + "cache" + "guard\n")
    (tmp_path / ("cache" + "guard.txt")).write_text("fine\n")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    found = mentions(tmp_path, files)
    assert "docs/a.md:2" in found
    assert any(entry.endswith("(its path)") for entry in found)
    assert not any(entry.startswith("CHANGELOG.md") for entry in found)


@pytest.mark.parametrize("spelling", ["CACHE" + "GUARD_X", "Cache" + "Guard" + "Error"])
def test_every_spelling_is_caught(spelling: str) -> None:
    assert OLD_NAME.search(spelling)
