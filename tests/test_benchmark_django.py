"""Smoke tests of ``python -m benchmarks django`` and ``sentinel``: shape and sanity only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("django_redis")

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")


def test_django_benchmark_reports_every_backend_and_phase(tmp_path: Path) -> None:
    # In a process of its own: Django's settings are configured once per process, and the
    # example project's tests (tests/test_django.py) configure other ones.
    from benchmarks import django as bench

    out = tmp_path / "django.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "django", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "CACHEWARD_BENCH_SMOKE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(out.read_text())["results"]["django"]
    assert "skipped" not in figures, figures.get("skipped")
    medians = figures["medians"]
    assert set(medians) == set(bench.CONTENDERS)
    for phases in medians.values():
        assert set(phases) == set(bench.PHASES)
    # The peers' figures depend on how their connections meet the fault (with REDIS_URL set
    # the fault is a proxy, whose reset can race a connection being opened): only ours are
    # checked. With Redis dead each customer costs the process one query, whatever the rate.
    for phase in bench.PHASES:
        assert medians["cacheward"][phase]["requests"] > 0
    ours = medians["cacheward"]["outage"]
    assert ours["errors"] == 0
    assert ours["queries"] <= bench.KEYS
    assert "During the outage" in result.stdout


def test_sentinel_benchmark_reports_the_failover() -> None:
    from benchmarks import sentinel as bench

    figures: dict[str, Any] = bench.run(quick=True)
    assert "skipped" not in figures, figures.get("skipped")
    for run in figures["rounds"]:
        assert run["errors"] == 0
        assert run["first_good_read"] is not None
        assert run["first_good_read"] >= 0
        assert run["max_latency"] > 0
