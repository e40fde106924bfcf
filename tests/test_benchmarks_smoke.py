"""Smoke tests for the hit, stampede and peers benchmarks: shape and sanity, never speed.

Each benchmark runs in its tiny mode (``CACHEWARD_BENCH_SMOKE=1``: a few rounds, 100 tasks,
10 threads) and we check that it reports every figure it promises, with sane values. The peers
(cachebox, cashews, ...) come from the ``bench`` extra; rows for peers that are not installed
are reported as skipped, so only cacheward's rows and the references are required here.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks import failures, hits, peers, stampede


@pytest.fixture(autouse=True)
def _smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")


def _finite_positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_hits_reports_every_contender_with_sane_ratios() -> None:
    figures: dict[str, Any] = hits.run(quick=True)
    rows = figures["rows"]
    for required in (
        "functools.lru_cache(128)",
        hits.ASYNC_REFERENCE,
        "cacheward",
        "cacheward async",
    ):
        assert required in rows, figures["skipped"]
    assert rows["functools.lru_cache(128)"]["ratio"] == 1.0
    assert rows[hits.ASYNC_REFERENCE]["ratio"] == 1.0
    for name, row in rows.items():
        assert row["group"] in ("sync", "async"), name
        assert _finite_positive(row["median_ns"]), name
        assert _finite_positive(row["ratio"]), name
        # Hits only: the backend ran once, for the warm-up, and never while being timed.
        if name != hits.ASYNC_REFERENCE:
            assert row["backend_calls"] == 1, name
    raw = figures["raw"]
    assert all(len(v) == figures["settings"]["rounds"] for v in raw["ratio_per_round"].values())
    for target in figures["targets"].values():
        assert _finite_positive(target["ratio"])
        assert target["met"] in (True, False)


def test_stampede_cacheward_makes_one_backend_call() -> None:
    figures: dict[str, Any] = stampede.run(quick=True)
    rows = figures["rows"]
    settings = figures["settings"]
    for name in ("cacheward", "cacheward async"):
        row = rows[name]
        assert [o["calls"] for o in row["rounds"]] == [1] * settings["rounds"], name
        assert row["errors"] == 0, name
        assert row["wrong"] == 0, name
        assert row["wall_ratio"] >= 1.0, name  # nobody can beat the backend's own latency
        assert figures["targets"][name]["calls_max"] == 1
    for name, row in rows.items():
        assert len(row["rounds"]) == settings["rounds"], name
        assert 0 <= row["calls_max"] <= row["callers"], name
        assert row["mode"] in ("async", "threads"), name
        assert not any(o["timed_out"] for o in row["rounds"]), name


def test_peers_summary_covers_every_library() -> None:
    figures: dict[str, Any] = peers.run(quick=True)
    assert [row[0] for row in figures["summary"]] == [label for label, _ in peers.SUMMARY]
    assert all(len(row) == 6 for row in figures["summary"])
    outage = figures["outage"]["rows"]["cacheward"]
    # Redis refused: one backend fetch per key, then every caller is served from memory.
    assert outage["backend_calls"] == peers.KEYS, outage
    assert outage["errors"] == 0, outage
    assert outage["callers"] == int(
        figures["outage"]["settings"]["rate"] * figures["outage"]["settings"]["duration"]
    )
    for name, row in figures["outage"]["rows"].items():
        assert 0 <= row["errors"] <= row["callers"], name
        assert row["backend_calls"] >= 0, name


def _benchmark_imports() -> dict[str, set[str]]:
    """``module -> benchmark modules it imports`` for every module under ``benchmarks/``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(
                        sub
                        if (root.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (root.parent / sub.replace(".", "/")).is_dir()
                        else base
                    )
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("benchmarks")}
        graph[name] = found - {name, "benchmarks"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_benchmark_modules_import_each_other_without_a_circle() -> None:
    graph = _benchmark_imports()
    assert "benchmarks._load" in graph["benchmarks.outage"]
    assert _cycle(graph) is None, _cycle(graph)
    # The check sees a circle when there is one.
    assert _cycle({**graph, "benchmarks._load": {"benchmarks.outage"}}) is not None


def test_failures_reports_a_capped_frame_free_table() -> None:
    figures: dict[str, Any] = failures.run(quick=True)
    settings = figures["settings"]
    assert settings["cap"] < settings["sizes"][-1]  # the tiny run goes past the table's cap
    for name, row in figures["rows"].items():
        assert row["wrong_errors"] == 0, name
        assert row["backend_errors"] == row["size"], name  # every call failed, with its error
        assert row["states_max"] == min(row["size"], settings["cap"]), name
        assert row["tracebacks_max"] == 0, name
        assert _finite_positive(row["cpu_last_chunk_s"]), name
    for name in ("table size", "tracebacks kept"):
        for colour in ("sync", "async"):
            assert figures["targets"][f"{name} {colour}"]["met"], name
