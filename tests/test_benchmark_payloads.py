"""Smoke test for ``python -m benchmarks payloads``: it runs and reports every figure it
promises, with sane values (never its speed)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks import payloads

pytestmark = pytest.mark.redis


def test_payloads_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")
    figures: dict[str, Any] = payloads.run(quick=True)
    l2 = figures["l2"]["1KB"]
    assert l2["hit"]["raw GET + json.loads"]["ratio"] == 1.0
    for table in ("hit", "write"):
        for name, row in l2[table].items():
            assert math.isfinite(row["seconds"]), name
            assert row["seconds"] > 0, name
    assert set(l2["redis_bytes"]) >= {"raw json", "cacheward", "cacheward zstd"}
    assert figures["miss_write"]["round_trips"] >= 1
    for row in figures["eviction"].values():
        assert set(row) == {"fifo", "lru", "lfu", "functools.lru_cache"}
    for row in figures["memory_per_entry"].values():
        assert 0 < row["cacheward fifo"] < 1000
    assert set(figures["codec"]) == {"1KB configuration", "100KB as records"}
    for row in figures["codec"].values():
        assert row["loads"]["json.loads"]["ratio"] == 1.0
        assert row["dumps"]["cacheward dumps"]["seconds"] > 0


def test_the_records_are_the_configuration_rows_as_dicts() -> None:
    rows = payloads.records(3)
    assert list(rows[1].values()) == list(payloads.config(3)["rows"]["item-1"])


def test_the_configuration_has_the_promised_shape() -> None:
    value = payloads.config(3)
    row = value["rows"]["item-1"]
    assert type(row) is tuple
    assert {type(v).__name__ for v in row} >= {"int", "str", "Decimal", "datetime", "list"}
