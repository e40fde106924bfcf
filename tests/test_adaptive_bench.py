"""Smoke test for ``python -m benchmarks incident --limiter adaptive``: shape, not speed.

The variant runs in its tiny mode (``CACHEWARD_BENCH_SMOKE=1``, without Redis, on SQLite) in
a few seconds. It checks that every figure the report quotes is there for every stack, that the
capacity really dips in the model, and that the adaptive stack's limit was sampled; no timing
is asserted.
"""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks import incident
from benchmarks._db import Capacity
from benchmarks.incident import adaptive


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CACHEWARD_BENCH_SMOKE", "1")
        mp.setenv("CACHEWARD_BENCH_NO_REDIS", "1")
        # SQLite, in a temporary directory: the shared PostgreSQL table belongs to whichever
        # benchmark run is using it (test_incident_smoke covers PostgreSQL).
        mp.delenv("DATABASE_URL", raising=False)
        return incident.run(quick=True, limiter="adaptive")


def test_every_stack_reports_every_figure(result: dict[str, Any]) -> None:
    assert result["variant"] == "adaptive"
    assert result["scenario"]["name"] == "adaptive-smoke"
    assert set(result["stacks"]) == set(adaptive.STACKS)
    for name in adaptive.STACKS:
        figures = result["adaptive_figures"][name]
        for key in (
            "seconds_above_capacity_in_dip",
            "statement_timeouts_in_dip",
            "caller_error_rate_in_dip",
            "served_p99_ms_in_outage",
        ):
            assert key in figures, (name, key)
        assert len(figures["slots"]) == len(result["stacks"][name]["series"]["rows"])
    assert set(result["goals"]) >= {"caller_errors", "seconds_above_capacity"}


def test_the_capacity_dips_and_the_adaptive_limit_is_sampled(result: dict[str, Any]) -> None:
    slots = result["adaptive_figures"]["guarded-adaptive"]["slots"]
    assert min(slots) == Capacity().slots * adaptive.DIP_FACTOR
    assert max(slots) == Capacity().slots
    limits = result["adaptive_figures"]["guarded-adaptive"]["limit_sum_per_s"]
    assert any(v is not None and v >= 1 for v in limits)
    assert all(v is None for v in result["adaptive_figures"]["guarded"]["limit_sum_per_s"])
    stats = result["stacks"]["guarded-adaptive"]["worker_stats"]
    assert all(s["adaptive"]["admitted"] == s["attempts"] for s in stats)


def test_slots_at_follows_the_dip() -> None:
    cap = Capacity(dip_at=10.0, dip_for=5.0, dip_factor=0.5)
    assert [cap.slots_at(t) for t in (9.9, 10.0, 14.9, 15.0)] == [8.0, 4.0, 4.0, 8.0]
    assert Capacity().slots_at(12.0) == 8.0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--stacks", "guarded-adaptive,naive"], ("naive", "guarded-adaptive")),
        ([], adaptive.STACKS),
    ],
)
def test_stacks_select_the_variants_stacks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, argv: list[str], expected: tuple[str, ...]
) -> None:
    """``--stacks`` chooses the stacks with ``--limiter adaptive`` as it does for the default
    replay (the variant used to run all four whatever was asked); without it, all four."""
    from benchmarks import __main__ as cli

    seen: list[tuple[str, ...]] = []

    def fake_run(*, quick: bool, replay: Any, stacks_: tuple[str, ...]) -> dict[str, Any]:
        seen.append(stacks_)
        return {}

    monkeypatch.setattr(adaptive, "run", fake_run)
    out = tmp_path / "out"
    assert cli.main(["incident", "--quick", "--limiter", "adaptive", "--out", str(out), *argv]) == 0
    assert seen == [expected]
