"""Identity: two live functions never read each other's entries (issue 13, item 1)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import cacheward as cw
from cacheward import _identity
from cacheward._background import drain
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey


class SharedDict:
    """A shared (non-local) layer in a dict: what two functions on one Redis would see."""

    name = "shared"
    local = False

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}

    def get(self, key: CacheKey) -> Entry | None:
        return self.data.get(key.text)

    def set(self, key: CacheKey, entry: Entry) -> None:
        self.data[key.text] = entry

    def delete(self, key: CacheKey) -> None:
        self.data.pop(key.text, None)

    def clear(self) -> None:
        self.data.clear()


def make_loader(table: str, layer: Any, **options: Any) -> Callable[[str], dict[str, str]]:
    @cw.cached(ttl=60, layers=[layer], **options)
    def load(customer: str) -> dict[str, str]:
        return {"table": table, "customer": customer}

    return load


# --- the failure case of the issue: one factory, two tables --------------------------------------


def test_two_functions_of_one_factory_are_refused_naming_namespace() -> None:
    layer = SharedDict()
    users = make_loader("users", layer)
    with pytest.raises(cw.ConfigurationError, match=r"namespace=.*make_loader\(\)") as info:
        make_loader("invoices", layer)
    assert 'namespace=f"make_loader:{table}"' in str(info.value)
    assert users("c1") == {"table": "users", "customer": "c1"}


def test_factory_functions_with_their_own_namespaces_never_read_each_other() -> None:
    layer = SharedDict()
    users = make_loader("users", layer, namespace="loader:users")
    invoices = make_loader("invoices", layer, namespace="loader:invoices")
    assert users("c1")["table"] == "users"
    assert invoices("c1")["table"] == "invoices"
    assert drain(layer, 5.0)
    assert len(layer.data) == 2


def test_sibling_without_claims_the_factory_functions_read_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Switch the claim check off: the issue's bug comes back (invoices gets the users row)."""
    monkeypatch.setattr(_identity, "claim", lambda *args, **kwargs: None)
    monkeypatch.setattr("cacheward._cached.claim", lambda *args, **kwargs: None)
    layer = SharedDict()
    users = make_loader("users", layer)
    invoices = make_loader("invoices", layer)
    assert users("c1")["table"] == "users"
    assert drain(layer, 5.0)  # the shared-layer write runs after the caller was answered
    assert invoices("c1")["table"] == "users"  # another function's value: what claims prevent


def test_a_collected_factory_function_frees_its_namespace() -> None:
    layer = SharedDict()
    first = make_loader("users", layer)
    assert first("c1")["table"] == "users"
    del first
    gc.collect()
    second = make_loader("users", layer)  # the first is gone: nothing to mix up
    assert second("c2")["table"] == "users"


def test_a_cycle_kept_first_owner_is_collected_before_refusing() -> None:
    layer = SharedDict()
    gc.disable()
    try:
        first = make_loader("users", layer)
        first.me = first  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        del first
        second = make_loader("users", layer)
    finally:
        gc.enable()
    assert second("c1")["table"] == "users"


# --- lambdas -------------------------------------------------------------------------------------


def test_a_lambda_in_a_shared_stack_must_be_named() -> None:
    with pytest.raises(cw.ConfigurationError, match=r"is a lambda.*namespace=") as info:
        cw.cached(ttl=60, layers=[SharedDict()])(lambda x: 2 * x)
    assert 'namespace="times_two"' in str(info.value)


def test_named_lambdas_never_read_each_other() -> None:
    layer = SharedDict()
    times = cw.cached(ttl=60, layers=[layer], namespace="times")(lambda x: 2 * x)
    plus = cw.cached(ttl=60, layers=[layer], namespace="plus")(lambda x: x + 1)
    assert times(7) == 14
    assert plus(7) == 8


def test_a_lambda_with_its_own_memory_layer_needs_no_name() -> None:
    times = cw.cached(ttl=60)(lambda x: 2 * x)
    plus = cw.cached(ttl=60)(lambda x: x + 1)
    assert (times(7), plus(7)) == (14, 8)


# --- explicit namespaces and re-decoration -------------------------------------------------------


def test_two_functions_claiming_one_namespace_are_refused() -> None:
    layer = SharedDict()

    @cw.cached(ttl=60, layers=[layer], namespace="config")
    def one(x: str) -> str:
        return "one"

    with pytest.raises(cw.ConfigurationError, match=r"namespace='config:v1'.*still alive"):

        @cw.cached(ttl=60, layers=[layer], namespace="config")
        def two(x: str) -> str:
            return "two"

    other = SharedDict()  # another layer: another key space, so no conflict

    @cw.cached(ttl=60, layers=[other], namespace="config")
    def three(x: str) -> str:
        return "three"

    @cw.cached(ttl=60, layers=[layer], namespace="config", version=2)  # other keys
    def four(x: str) -> str:
        return "four"

    assert (one("a"), three("a"), four("a")) == ("one", "three", "four")


def test_the_same_function_decorated_again_keeps_its_namespace() -> None:
    layer = SharedDict()

    def load(x: str) -> str:
        return x

    first = cw.cached(ttl=60, layers=[layer])(load)
    again = cw.cached(ttl=60, layers=[layer])(load)
    assert first("a") == again("a") == "a"


SOURCE = textwrap.dedent(
    """
    import cacheward as cw

    def build(layer, answer):
        @cw.cached(ttl=60, layers=[layer], namespace="reloaded")
        def load(x):
            return answer

        return load

    def top(x):
        return "top"
    """
)


def _import(layer: Any, source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"/src/{name}.py", "exec"), module.__dict__)  # noqa: S102
    return module


def test_a_reimported_module_supersedes_its_earlier_self() -> None:
    layer = SharedDict()
    name = f"reload_{uuid.uuid4().hex}"
    old = _import(layer, SOURCE, name)
    kept = cw.cached(ttl=60, layers=[layer])(old.top)
    new = _import(layer, SOURCE, name)  # same module, qualname and file: the same function
    again = cw.cached(ttl=60, layers=[layer])(new.top)
    assert kept("a") == "top"
    assert drain(layer, 5.0)
    assert again("a") == "top"
    assert len(layer.data) == 1  # one entry: they are one function, and share it


def test_an_edited_reload_is_still_the_same_function() -> None:
    layer = SharedDict()
    name = f"reload_{uuid.uuid4().hex}"
    old = _import(layer, SOURCE, name)
    kept = cw.cached(ttl=60, layers=[layer])(old.top)
    edited = _import(layer, SOURCE.replace('"top"', '"edited"'), name)
    cw.cached(ttl=60, layers=[layer])(edited.top)
    assert kept("a") == "top"


def test_another_file_with_the_same_names_is_another_function() -> None:
    layer = SharedDict()
    name = f"dup_{uuid.uuid4().hex}"
    first = _import(layer, SOURCE, name)
    kept = cw.cached(ttl=60, layers=[layer])(first.top)
    module = types.ModuleType(name)
    exec(compile(SOURCE, "/elsewhere/other.py", "exec"), module.__dict__)  # noqa: S102
    with pytest.raises(cw.ConfigurationError, match="namespace="):
        cw.cached(ttl=60, layers=[layer])(module.top)
    assert kept("a") == "top"


def test_a_memory_layer_given_to_two_closures_is_refused() -> None:
    layer = cw.MemoryLayer()
    users = make_loader("users", layer)
    with pytest.raises(cw.ConfigurationError, match="MemoryLayer already used by"):
        make_loader("invoices", layer)
    assert users("c1")["table"] == "users"


# --- across processes: the same code shares entries in a real Redis ------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    import cacheward as cw

    calls = []

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), cw.RedisLayer.from_url(sys.argv[1],
               namespace=sys.argv[2])])
    def load(customer):
        calls.append(customer)
        return {"customer": customer, "table": sys.argv[3]}

    def loader(table):
        @cw.cached(ttl=60, layers=[cw.MemoryLayer(), cw.RedisLayer.from_url(sys.argv[1],
                   namespace=sys.argv[2])], namespace=f"loader:{table}")
        def load_table(customer):
            calls.append(customer)
            return {"customer": customer, "table": table}
        return load_table

    print(load("c1")["table"], loader(sys.argv[3])("c1")["table"], len(calls))
    """
)


@pytest.fixture
def space(redis_url: str) -> str:
    return f"ident{uuid.uuid4().hex[:12]}"


def _run(redis_url: str, space: str, table: str, tmp: Any) -> list[str]:
    script = tmp / "worker_identity.py"
    script.write_text(WORKER)
    done = subprocess.run(
        [sys.executable, str(script), redis_url, space, table],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.redis
def test_the_same_code_in_two_processes_shares_entries_and_factories_stay_apart(
    redis_url: str, space: str, tmp_path: Any
) -> None:
    first = _run(redis_url, space, "users", tmp_path)
    assert first == ["users", "users", "2"]  # both fetched
    second = _run(redis_url, space, "invoices", tmp_path)
    # ``load`` is the same function in both processes (same module and qualname): the second
    # process reads the first's entry. The factory's functions have their own namespaces: the
    # invoices loader fetched instead of reading the users row.
    assert second == ["users", "invoices", "1"]


def _claims_after_the_layer_dies() -> int:
    """Decorate a living function with a MemoryLayer, drop the layer, and count the claims
    still naming the function."""
    import gc
    import weakref

    from cacheward import _identity

    def base(customer: str) -> str:
        return customer

    layer = cw.MemoryLayer()
    assert cw.cached(ttl=60, layers=[layer])(base)("c1") == "c1"
    dead = weakref.ref(layer)

    def claims_of_base() -> int:
        kept = [claims for _, claims in _identity._CLAIMS_BY_ID.values()]
        every = [*_identity._CLAIMS.values(), *kept]
        return sum(holder.ref() is base for claims in every for holder in claims.values())

    assert claims_of_base() == 1
    del layer
    gc.collect()
    assert dead() is None
    return claims_of_base()


def test_a_dead_memory_layers_claim_dies_with_it_though_its_function_lives() -> None:
    # A regression test: claims were keyed by id(layer), so a new MemoryLayer allocated at a dead
    # one's address inherited its "one function per layer" claim, and was refused as "already
    # used by" a function that outlived its layer (a module-level function decorated, used and
    # dropped in a loop). MemoryLayer is weakly referenceable: its claim goes with it.
    assert _claims_after_the_layer_dies() == 0  # nothing a new layer could inherit


def test_claims_keyed_by_id_outlive_their_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sibling: keyed by id without keeping the layer alive (the old bug), the dead layer's
    # claim stays for the next object at that address to inherit, and the check above sees it.
    from cacheward import _identity

    by_id: dict[int, tuple[object, dict[str, Any]]] = {}
    monkeypatch.setattr(_identity, "_CLAIMS_BY_ID", by_id)
    monkeypatch.setattr(
        _identity, "_claims_of", lambda layer: by_id.setdefault(id(layer), (None, {}))[1]
    )
    assert _claims_after_the_layer_dies() == 1
