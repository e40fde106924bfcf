"""Smoke test of ``python -m benchmarks faults``: its tiny mode reports every column of its table
for each row it runs, and the shared-bucket restart windows; shape, never speed."""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks import faults

pytestmark = pytest.mark.redis


def test_the_faults_benchmark_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")
    figures: dict[str, Any] = faults.run(quick=True)
    rows = figures["rows"]
    assert {(r["fault"], r["colour"]) for r in rows} == {
        (fault, colour)
        for fault in ("SIGKILL + restart", "bucket: password changed")
        for colour in ("sync", "async")
    }
    for row in rows:
        assert row["backend_calls"] > 0, row
        assert row["bound"] > 0, row
        assert row["max_latency_s"] > 0, row
        assert row["deadline_s"] == faults.DEADLINE
        assert isinstance(row["errors"], dict)
        assert set(row["leaks"]) in ({"threads", "fds"}, {"tasks", "fds"})
        assert isinstance(row["defects"], list)
    windows = figures["bucket_restart"]["windows"]
    assert windows
    for window in windows.values():
        assert window["most"] >= 0
        assert window["bound"] > 0
    assert figures["not_run"]


def test_the_process_rows_report_every_figure() -> None:
    from benchmarks import _process_faults

    rows = _process_faults.rows(1.2, 4, 8)
    assert [(r.fault, r.colour) for r in rows] == [
        ("two event loops (one ends first)", "async"),
        ("fork with a flight in progress", "sync"),
        ("fork with a flight in progress", "async"),
        ("refresh starvation across functions", "sync"),
    ]
    for row in rows:
        figures = row.figures()
        assert figures["backend_calls"] > 0, figures
        assert figures["bound"] > 0, figures
        assert figures["max_latency_s"] > 0, figures
        assert set(figures["leaks"]) == {"threads", "fds"}
        assert not any(name.startswith("child") for name in figures["errors"]), figures
