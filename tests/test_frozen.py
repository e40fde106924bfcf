"""Record classes built at first use (``cacheward._frozen``): exactly a frozen dataclass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import pytest

from cacheward._frozen import Frozen


def make_record() -> type:
    class Point(Frozen):
        """A record with a default."""

        x: int
        y: int = 0

    return Point


def test_a_record_is_built_at_its_first_instance() -> None:
    point = make_record()
    assert "__dataclass_fields__" not in point.__dict__
    p = point(1, y=2)
    assert "__dataclass_fields__" in point.__dict__
    assert (p.x, p.y) == (1, 2)
    assert p == point(1, 2)
    assert hash(p) == hash(point(1, 2))
    assert p != point(1)
    assert repr(p).endswith("Point(x=1, y=2)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3
    assert dataclasses.replace(p, y=5) == point(1, 5)
    assert dataclasses.asdict(p) == {"x": 1, "y": 2}


def test_a_record_inspected_before_any_instance_is_built_then() -> None:
    point = make_record()
    assert dataclasses.is_dataclass(point)
    assert [f.name for f in dataclasses.fields(point)] == ["x", "y"]
    assert point.__match_args__ == ("x", "y")  # type: ignore[attr-defined]


def test_the_base_is_not_a_record_and_unknown_names_are_attribute_errors() -> None:
    assert not dataclasses.is_dataclass(Frozen)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        make_record().nothing  # type: ignore[attr-defined]  # noqa: B018


def test_concurrent_first_instances_build_once() -> None:
    point = make_record()
    built: list[object] = []
    barrier = threading.Barrier(8)

    def first() -> None:
        barrier.wait()
        built.append(point(1).__class__.__init__)

    threads = [threading.Thread(target=first) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(built) == 8
    assert len(set(built)) == 1


def test_a_missing_build_is_what_the_lazy_records_prevent() -> None:
    # The sibling that can fail: a Frozen subclass whose build is skipped is no dataclass, and
    # calling it only re-enters the placeholder init; so the tests above do see the build.
    from cacheward import _frozen

    point = make_record()
    original = _frozen._build
    try:
        _frozen._build = lambda cls: None
        assert not dataclasses.is_dataclass(point)
        with pytest.raises(RecursionError):
            point(1)
    finally:
        _frozen._build = original


def test_import_cacheward_does_not_import_dataclasses() -> None:
    probe = "import sys, cacheward\nprint('dataclasses' in sys.modules, 'inspect' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_a_plain_subclass_of_a_record_is_not_rebuilt() -> None:
    point = make_record()

    class Labelled(point):  # type: ignore[valid-type,misc]
        label = "p"

    p = Labelled(1, 2)  # builds the record, not the subclass
    assert (p.x, p.y, p.label) == (1, 2, "p")
    assert "__dataclass_fields__" in point.__dict__
    assert "__dataclass_fields__" not in Labelled.__dict__
    assert [f.name for f in dataclasses.fields(Labelled)] == ["x", "y"]
