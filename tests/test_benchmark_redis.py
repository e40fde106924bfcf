"""Smoke tests for ``python -m benchmarks redis`` and ``outage``: shape and counts, never speed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks import outage
from benchmarks import redis as redis_bench

from servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def _smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    RedisServer.require()
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")


def test_redis_benchmark_reports_hits_and_a_one_call_stampede() -> None:
    figures: dict[str, Any] = redis_bench.run(quick=True)
    rows = figures["hits"]["rows"]
    for name in ("redis-py GET + json.loads", "cacheward L2 hit", "RedisLayer.get"):
        assert math.isfinite(rows[name]["ratio"])
        assert rows[name]["ratio"] > 0
    assert rows["redis-py GET + json.loads"]["ratio"] == 1.0
    storm = figures["stampede"]
    assert storm["backend_calls"] == storm["rounds"]  # one per cold key, across processes
    assert storm["callers_served"] == storm["callers"]
    local = figures["local_stampede"]
    assert local["backend_calls_per_round"] == 1  # one per cold key, threads and tasks alike
    assert all(math.isfinite(row["median"]) for row in local["rows"].values())
    assert all(target["met"] in (True, False) for target in figures["targets"].values())


def test_outage_benchmark_cacheward_fetches_each_key_once_and_serves_everyone() -> None:
    figures: dict[str, Any] = outage.run(quick=True)
    for mode in outage.MODES:
        rows = figures["modes"][mode]
        for name in ("cacheward", "cacheward async"):
            row = rows[name]
            assert row["backend_calls"] == 10, (mode, name)
            assert row["errors"] == 0, (mode, name)
            assert row["served"] == row["callers"] > 0, (mode, name)
    # benchmarks/peers.py reports outage.refused_outage(); its own smoke test runs it.
    assert callable(outage.refused_outage)
