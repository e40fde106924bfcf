"""The small sync/async twins left in the read path say the same thing.

The read-through and ``RedisLayer`` are written once, as plans (``cacheward._plan``); what stays
hand-written in both colours is a handful of short methods (an op's ``sync`` / ``aio``, a layer
method and its ``a``-prefixed coroutine, the two performers). This test finds every such pair
in the modules below and checks that the async one is the sync one with ``await`` added and
names given their async spelling — what an unasync script would generate — and that none is
longer than ~10 lines.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator

import pytest

import cacheward._layers
import cacheward._plan
import cacheward._readpath
import cacheward._redis
import cacheward._rediskit

MODULES = [
    cacheward._plan,
    cacheward._readpath,
    cacheward._redis,
    cacheward._rediskit,
    cacheward._layers,
]
#: Async spelling -> sync spelling, for names that are not just ``a`` + the sync name.
RENAMES = {"aio": "sync", "aperform": "perform", "_async": "_sync", "async_client": "sync_client"}
#: The longest body a hand-kept twin may have (lines, docstring excluded).
MAX_LINES = 12
#: Twins that legitimately differ (a reason each).
DIFFERENT = {
    # A thread waits on an event; a task on a future answered by the fetch task.
    ("Join", "sync"),
    # A thread runs its fetch plan itself; a task starts the fetch task and waits for it.
    ("Lead", "sync"),
    # A thread's refresh is an executor job; a task's is a task.
    ("Refresh", "sync"),
    # A thread hands the writes to an executor; a fetch task runs them itself.
    ("Detach", "sync"),
    # Closing an asyncio client belongs to the loop that made it; the sync one drains writes.
    ("RedisLayer", "close"),
    # redis-py's sync socket timeout bounds each recv, so a sync command carries its own
    # deadline (cacheward._redisclient); the asyncio client bounds the whole reply already.
    ("_Command", "sync"),
    # Each colour reaches the layers whose client serves it (a from_url layer serves both).
    ("", "invalidate_tags"),
}


def pairs() -> Iterator[tuple[str, ast.FunctionDef, ast.AsyncFunctionDef]]:
    for module in MODULES:
        tree = ast.parse(inspect.getsource(module))
        scopes: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
        scopes += [(n.name, n.body) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for scope, body in scopes:
            sync = {f.name: f for f in body if isinstance(f, ast.FunctionDef)}
            for fn in body:
                if not isinstance(fn, ast.AsyncFunctionDef):
                    continue
                twin = RENAMES.get(fn.name, fn.name[1:] if fn.name.startswith("a") else "")
                if twin in sync and not _is_stub(fn):
                    yield f"{module.__name__}.{scope}.{twin}", sync[twin], fn


def _is_stub(fn: ast.AST) -> bool:
    body = [s for s in getattr(fn, "body", []) if not _is_docstring(s)]
    return not body or all(isinstance(s, ast.Expr) and s.value == ast.Constant(...) for s in body)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body = [s for s in fn.body if not _is_docstring(s)]
    return "\n".join(ast.unparse(s) for s in body)


def unasync(text: str) -> str:
    text = re.sub(r"\bawait ", "", text)
    text = re.sub(r"\basync (for|with)\b", r"\1", text)

    def rename(match: re.Match[str]) -> str:
        name = match.group(0)
        if name in RENAMES:
            return RENAMES[name]
        return name[1:] if name.startswith("a") and name[1:] in SYNC_NAMES else name

    return ast.unparse(ast.parse(re.sub(r"\b[A-Za-z_]\w*\b", rename, text)))


SYNC_NAMES = {
    "get", "set", "delete", "clear", "lease", "publish", "release_lease", "acquire_lease",
    "set_fenced", "run", "call", "serve", "invalidate", "sleep", "close", "fence",
    "fence_tags", "cache_clear", "probe",
}  # fmt: skip


ALL = list(pairs())


def test_the_twins_are_found() -> None:
    names = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name, _, _ in ALL}
    assert {"LayerOp.sync", "_Command.sync", "RedisLayer.get", ".perform"} <= names


@pytest.mark.parametrize(("name", "sync", "aio"), ALL, ids=[name for name, _, _ in ALL])
def test_each_twin_is_short_and_the_async_one_is_the_sync_one_awaited(
    name: str, sync: ast.FunctionDef, aio: ast.AsyncFunctionDef
) -> None:
    scope, method = name.rsplit(".", 2)[-2:]
    if re.fullmatch(rf"(return )?self\.{method}\(.*\)", _body(aio)):
        return  # the coroutine just calls the sync method (an in-process layer): no twin
    for fn in (sync, aio):
        lines = len(_body(fn).splitlines())
        assert lines <= MAX_LINES, f"{name}: {lines} lines of hand-kept twin (write it once)"
    if (scope, method) in DIFFERENT:
        return
    assert unasync(_body(aio)) == _body(sync), f"{name}: the twins differ"


def test_the_comparison_catches_twins_that_drifted() -> None:
    """The sibling: a pair whose async body does one more thing is caught."""
    sync = ast.parse("def get(self, key):\n    return self.layer.get(key)\n").body[0]
    aio = ast.parse(
        "async def aget(self, key):\n    self.count()\n    return await self.layer.aget(key)\n"
    ).body[0]
    assert isinstance(sync, ast.FunctionDef)
    assert isinstance(aio, ast.AsyncFunctionDef)
    assert unasync(_body(aio)) != _body(sync)
    same = ast.parse("async def aget(self, key):\n    return await self.layer.aget(key)\n").body[0]
    assert isinstance(same, ast.AsyncFunctionDef)
    assert unasync(_body(same)) == _body(sync)


def test_no_module_imports_another_modules_private_names() -> None:
    """Private names stay in their module: other modules import what it offers by name."""
    import pathlib

    offenders = []
    # The package's own modules (contrib integrations are checked by their own tests).
    for path in pathlib.Path(cacheward._plan.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cacheward"):
                offenders += [
                    f"{path.name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and node.module != "cacheward"  # a private module of the package itself
                ]
    assert not offenders, offenders
