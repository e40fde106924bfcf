"""Smoke test of ``python -m benchmarks coherence``: shape and sanity, never speed."""

from __future__ import annotations

import pytest
from benchmarks import coherence

pytestmark = pytest.mark.redis


def test_coherence_benchmark_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")
    figures = coherence.run(quick=True)
    assert figures["healthy"]["ratio"] > 0
    hung = figures["hung"]
    assert hung["reported_pending"] == hung["calls"]  # every call said it was kept
    assert hung["still_pending"] == 0  # and the replay delivered it after the heal
    assert hung["replayed"] == 1  # newest per key: one invalidation, replayed once
    assert figures["stale_stored"] == {"fence": 0, "plain_del": figures["races"]}
    assert figures["propagation"]["not_dropped"] == 0  # every listener dropped every key
    assert figures["hit_cost"]["ratio"] > 0
    down = figures["channel_down"]
    assert down["never_new"] == 0  # every process came to serve the new value
    # ... and not through the channel (its user may not subscribe): by re-validating old entries
    assert down["rechecks"] > 0
    bulk = figures["tags_bulk"]
    assert bulk["invalidate_tags"]["writes"] == 1  # one mark, whatever the number of entries
    assert bulk["pipelined_del"]["writes"] == bulk["entries"]
    assert all(bulk[way]["servable_after"] == 0 for way in ("invalidate_tags", "pipelined_del"))
    loaded = figures["tags_under_load"]
    assert loaded["guard"]["backend_calls_before"] == 0
    assert loaded["guard"]["backend_calls_after"] <= loaded["guard"]["bound"]
    assert loaded["cached"]["backend_calls_after"] > loaded["guard"]["backend_calls_after"]
