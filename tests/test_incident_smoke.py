"""Smoke test for the incident replay (``python -m benchmarks incident``): shape and bounds.

The replay runs in its tiny mode (``CACHEWARD_BENCH_SMOKE=1``: 2 worker processes, 8
customers, phases of about a second) without Redis (``CACHEWARD_BENCH_NO_REDIS=1``: the outage
is the in-process caches being flushed), in a few seconds. It checks that every promised figure
is reported and that the accounting adds up, then the claim itself in counts, never in time: the
guarded stack reads at most 1.5x what a perfect cache with the same TTL reads during the outage,
and the naive stack reads more than the guarded one.
"""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks import incident

PHASE_FIELDS = {
    "queries",
    "queries_peak_per_s",
    "rows_read",
    "rows_peak_per_s",
    "statement_timeouts",
    "perfect_rebuilds",
    "perfect_rows",
    "amplification",
    "lossless_rebuilds",
    "amplification_vs_lossless",
    "requests",
    "errors",
    "error_rate",
    "errors_by_kind",
    "stale_served",
    "p50_ms",
    "p99_ms",
    "stale_p99_ms",
}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CACHEWARD_BENCH_SMOKE", "1")
        mp.setenv("CACHEWARD_BENCH_NO_REDIS", "1")
        return incident.run(quick=True)


def test_reports_every_figure(result: dict[str, Any]) -> None:
    for key in ("scenario", "capacity", "naive_config", "guarded_config", "ratios", "targets"):
        assert result[key], key
    assert result["scenario"]["name"] == "smoke"
    assert "absent" in result["l2"]
    assert set(result["stacks"]) == set(incident.STACKS)
    for stack in incident.STACKS:
        figures = result["stacks"][stack]
        assert set(figures["phases"]) == {"healthy", "outage", "recovery", "total"}
        for phase in figures["phases"].values():
            assert set(phase) >= PHASE_FIELDS
        lengths = {len(series) for series in figures["series"].values()}
        assert len(lengths) == 1, lengths
    assert set(result["targets"]) == {
        "amplification_outage",
        "error_rate_outage",
        "stale_p99_vs_healthy_p99",
        "recovered_within_ttl_s",
    }


def test_every_request_is_accounted_for(result: dict[str, Any]) -> None:
    sc = incident.SMOKE
    generated = sum(len(incident.arrivals(sc, p)) for p in range(sc.processes))
    for stack in incident.STACKS:
        figures = result["stacks"][stack]
        total = figures["phases"]["total"]
        assert total["requests"] + figures["censored_requests"] == generated, stack
        assert sum(figures["series"]["requests"]) == total["requests"]
        assert total["rows_read"] > 0
        assert total["queries"] == sum(figures["series"]["queries"])


def test_perfect_cache_reference_counts_each_key_once_per_process_after_the_loss() -> None:
    sc = incident.SMOKE
    rebuilds = incident.perfect_rebuilds(sc, None)
    assert rebuilds == sorted(rebuilds)
    # Without L2 every process rebuilds each key it sees at most once per TTL window.
    customers = sc.customers * sc.processes
    windows = int(sc.total // sc.ttl) + 2  # cold start, the loss, and each TTL after them
    assert len(rebuilds) <= customers * windows


def test_a_cache_that_loses_nothing_needs_no_more_rebuilds_than_one_that_loses_its_layers() -> None:
    sc = incident.SMOKE
    stamps = dict.fromkeys(range(sc.customers), -0.5)
    lossy = incident.perfect_rebuilds(sc, stamps)
    lossless = incident.perfect_rebuilds(sc, stamps, lossless=True)
    assert len(lossless) <= len(lossy)
    # Entries written 0.5 s before the start stay fresh until ttl - 0.5: nothing to rebuild.
    assert all(t >= sc.ttl - 0.5 for t in lossless)
    assert lossless, "the run is longer than the entries' life, so some rebuilds are due"


def test_guarded_amplification_is_bounded_and_naive_is_larger(result: dict[str, Any]) -> None:
    naive = result["stacks"]["naive"]["phases"]["outage"]
    guarded = result["stacks"]["guarded"]["phases"]["outage"]
    assert guarded["perfect_rebuilds"] > 0
    assert guarded["amplification"] <= 1.5, guarded
    assert naive["amplification"] > guarded["amplification"], (naive, guarded)
    assert result["ratios"]["rows_read_outage"] > 1.0
    assert result["ratios_by_stack"]["guarded"] == result["ratios"]


def test_the_summary_reads_as_sentences(result: dict[str, Any]) -> None:
    from benchmarks.incident import report, stacks

    specs = stacks.selected(None)
    text = "\n".join(report.summary(incident.SMOKE, result, specs))
    assert "During the" in text
    assert "perfect cache" in text
    # No infinities and no raw identifiers (``rows_read_outage``, ``errors_total``...).
    assert "inf" not in text.replace("in-process", "")
    assert not [w for w in text.split() if "_" in w], text
    assert text.count("target: at most") == len(result["targets"])


def test_the_scenario_announces_the_expected_warnings() -> None:
    from benchmarks.incident import report, stacks

    specs = stacks.selected(None)
    lines = report.intro(
        incident.SMOKE, specs, database="db", l2="redis", l2_mode="private", fault="down"
    )
    assert any("breaker_opened" in line and "Connection refused" in line for line in lines)
    without = report.intro(
        incident.SMOKE, specs, database="db", l2="none", l2_mode="absent", fault="down"
    )
    assert not any("breaker_opened" in line for line in without)


def test_stacks_are_chosen_from_the_registry_baseline_first() -> None:
    from benchmarks.incident import stacks

    assert [s.name for s in stacks.selected("guarded,naive")] == ["naive", "guarded"]
    assert [s.name for s in stacks.selected(None)] == list(incident.STACKS)
    with pytest.raises(ValueError, match="unknown stack nope"):
        stacks.selected("naive,nope")
    with pytest.raises(ValueError, match="baseline"):
        stacks.selected("guarded")
    with pytest.raises(ValueError, match="already registered"):
        stacks.register(stacks.REGISTRY["guarded"])


def test_check_finds_every_missed_target_and_only_those() -> None:
    from benchmarks.__main__ import finite, missed_targets

    figures = {
        "incident": {"targets": {"a": {"met": True}, "b": {"met": False}, "c": {"met": None}}},
        "hits": {"deep": {"targets": {"d": {"met": False}}}},
    }
    assert sorted(missed_targets(figures)) == ["hits.deep.targets.d", "incident.targets.b"]
    assert finite({"x": [float("inf"), 1.0, float("nan")]}) == {"x": [None, 1.0, None]}


def test_check_turns_a_missed_target_into_exit_status_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import sys
    import types

    from benchmarks import __main__ as cli

    fake = types.ModuleType("benchmarks.fake")
    fake.run = lambda *, quick: {"targets": {"t": {"met": False, "value": float("inf")}}}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.fake", fake)
    monkeypatch.setitem(cli.BENCHMARKS, "fake", "a benchmark that misses its target")
    out = tmp_path / "out"
    monkeypatch.setenv("CACHEWARD_BENCH_OUT", str(out))  # main() sets it; undone after the test
    assert cli.main(["fake", "--out", str(out)]) == 0
    assert (out / "fake.json").exists()
    assert cli.main(["fake", "--quick", "--check", "--out", str(out)]) == 1
    assert '"value": null' in (out / "fake-quick.json").read_text()


def test_a_registered_variant_gets_its_own_column_summary_and_targets(
    result: dict[str, Any],
) -> None:
    import dataclasses

    from benchmarks.incident import report, stacks

    variant = dataclasses.replace(stacks.REGISTRY["guarded"], name="variant", label="variant")
    stacks.register(variant)
    try:
        specs = stacks.selected("naive,guarded,variant")
        assert [s.name for s in specs] == ["naive", "guarded", "variant"]
        three = {
            **result,
            "stacks": {**result["stacks"], "variant": result["stacks"]["guarded"]},
            "targets_by_stack": {**result["targets_by_stack"], "variant": result["targets"]},
        }
        rows = report.table_rows(three["stacks"], incident.SMOKE, [s.name for s in specs])
        assert all(len(row) == 4 for row in rows)
        text = "\n".join(report.summary(incident.SMOKE, three, specs))
        assert "variant's targets" in text
        assert text.count("target: at most") == 2 * len(result["targets"])
    finally:
        del stacks.REGISTRY["variant"]


# ---------------------------------------------------------------- every stack's prefill
#
# The replay fills Redis before each stack's run, as a service that has been up a while would
# have it; the tiny replay above runs without Redis and so never runs a prefill (a prefill that
# raised once crashed the default replay while this file passed). Here every registered stack
# (the default ones and the variants) is prefilled for real, the way ``run_stack`` does it, and
# must then serve the entries it wrote without reading the database.


def _registered() -> list[str]:
    from benchmarks.incident import adaptive, stacks

    assert adaptive  # imported for the variants it registers
    return sorted(stacks.REGISTRY)


@pytest.fixture(scope="module")
def prefill_env(redis_url: str) -> Any:
    import multiprocessing

    from benchmarks._db import Database, Meter
    from benchmarks._redisproc import L2

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REDIS_URL", redis_url)  # L2 in its "url" mode, behind a loopback proxy
        l2 = L2()
        db = Database(incident.SMOKE.dataset)
        db.create()
        try:
            l2.start()
            yield l2, db, Meter(multiprocessing.get_context("spawn"))
        finally:
            l2.stop()
            db.drop()


def check_prefill(spec: Any, env: Any) -> None:
    """Prefill ``spec``'s stack as the replay does, then read every customer through it."""
    import dataclasses

    from benchmarks._db import Store
    from benchmarks._naive import built_at
    from benchmarks.incident.replay import _prefill

    l2, db, meter = env
    sc = incident.SMOKE
    l2.flush()
    written = _prefill(sc, spec, db, l2.url)
    store = Store(db.spec, dataclasses.replace(sc.capacity, row_cost=0.0), meter)
    try:
        stack = spec.build(store, sc, l2.url)
        try:
            served = {customer: built_at(stack.get(customer)) for customer in written}
        finally:
            stack.close()  # after the refreshes of stale entries have written to Redis
    finally:
        store.close()
    rebuilt = sorted(c for c, stamp in served.items() if abs(stamp - written[c]) > 0.01)
    assert not rebuilt, f"{spec.name}: the prefilled entries of customers {rebuilt} were not served"


@pytest.mark.parametrize("name", _registered())
def test_every_stacks_prefill_runs_and_its_stack_serves_what_it_wrote(
    name: str, prefill_env: Any
) -> None:
    from benchmarks.incident import stacks

    check_prefill(stacks.REGISTRY[name], prefill_env)


def test_the_prefill_check_catches_a_prefill_that_raises(prefill_env: Any) -> None:
    import dataclasses

    from benchmarks.incident import stacks

    def raising(*args: Any) -> None:
        raise RuntimeError("the prefill broke")

    broken = dataclasses.replace(stacks.REGISTRY["guarded"], prefill=raising)
    with pytest.raises(RuntimeError, match="the prefill broke"):
        check_prefill(broken, prefill_env)


def test_the_prefill_check_catches_a_prefill_the_stack_cannot_read(prefill_env: Any) -> None:
    import dataclasses

    from benchmarks.incident import stacks

    def nothing(*args: Any) -> None:
        return None

    broken = dataclasses.replace(stacks.REGISTRY["guarded"], prefill=nothing)
    with pytest.raises(AssertionError, match=r"^guarded: the prefilled entries of customers"):
        check_prefill(broken, prefill_env)
