"""Smoke test for ``python -m benchmarks protect``: every figure is there and sane (never speed)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks import protect


@pytest.fixture(autouse=True)
def _smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")


def test_protect_reports_every_figure() -> None:
    figures: dict[str, Any] = protect.run(quick=True)
    rows = figures["rows"]
    for name in ("cached", "guard", "cached async", "guard async", "TokenBucket.reserve(0)"):
        assert math.isfinite(rows[name]["median_ns"]), name
        assert rows[name]["median_ns"] > 0, name
    runs = figures["storm"]["runs"]
    for label in ("fail 50%", "fail 100%"):
        assert set(runs[label]) == set(protect.STORM_CONTENDERS)
    # The storm is simulated and seeded: these are exact, not timings.
    ours = runs["fail 100%"]["cw.retry + budget"]
    assert ours["attempts_per_request"] <= figures["storm"]["target_attempts_per_request"]
    assert runs["fail 100%"]["tenacity stop_after_attempt(5)"]["attempts_per_request"] == 5.0
    assert runs["fail 100%"]["stamina defaults"]["attempts_per_request"] == 10.0
    assert all(t["met"] in (True, False) for t in figures["targets"].values())
