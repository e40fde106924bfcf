"""Which function a namespace belongs to: two live functions never read each other's entries.

A cached function's entries in a layer are found by its namespace (``namespace=``, default the
function's module and qualified name). The default is only an identity when the name is one:

- a **lambda** has no name (every lambda of a module is ``<lambda>``): in a stack with a shared
  layer its default namespace is refused at decoration, with a message saying how to name it
  (the only rule that also holds *across processes*, where one process cannot see another's
  lambdas);
- a function **made inside another function** (``make_loader.<locals>.load``) has the same name
  every time its factory runs, whatever arguments made it different: a second live one claiming
  the namespace is refused with a message saying how to name each (below). An app factory that
  runs once per process keeps the default; a factory whose arguments differ *between processes*
  must pass ``namespace=`` (documented in docs/caching.md), since no process can see the
  other's closures.

Within a process, each layer records which function claimed each namespace on it, and a second
function claiming it is refused (naming ``namespace=``), unless it is the same function again:

- the same function object, or one with the same ``__code__`` whose first claim was garbage
  collected;
- a function with the same module, qualified name and source file (``co_filename``) that is
  neither a lambda nor a local: the module was imported again or hot reloaded, and the new
  definition supersedes the old one (whose name in that module now means the new one). The code
  itself may differ (an edit under hot reload); bump ``version=`` when the values change shape.

Two *live* functions sharing one code object are closures made by one factory: refused even
with an explicit ``namespace=``, since the closures are what make them different.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from cacheward import _forksafe
from cacheward._errors import ConfigurationError

__all__ = ["Identity", "claim", "default_namespace", "identity_of"]


class Identity:
    """What makes a function *this* function: its name, where it was written, its code."""

    __slots__ = ("code", "filename", "module", "qualname", "ref")

    def __init__(self, fn: Callable[..., Any]) -> None:
        import inspect  # at decoration: importing cacheward does not load it

        base = inspect.unwrap(fn)
        self.module = str(getattr(fn, "__module__", None) or "?")
        self.qualname = str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
        code = getattr(base, "__code__", None)
        self.code: object = code
        self.filename = str(getattr(code, "co_filename", ""))
        self.ref: Callable[[], object]
        try:
            self.ref = weakref.ref(base)
        except TypeError:  # not weak-referenceable: held for the life of the process
            self.ref = lambda: base

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"

    @property
    def nameless(self) -> bool:
        """A lambda or a function made inside another function: its name is no identity."""
        return "<lambda>" in self.qualname or "<locals>" in self.qualname

    def same_function(self, other: Identity) -> bool:
        """Whether ``other`` is this function decorated again (see the module docstring)."""
        mine, theirs = self.ref(), other.ref()
        if mine is None or mine is theirs:
            return True
        if self.code is not None and self.code is other.code:
            return False  # two live closures of one factory
        return (
            not self.nameless
            and self.name == other.name
            and bool(self.filename)
            and self.filename == other.filename
        )


def identity_of(fn: Callable[..., Any]) -> Identity:
    return Identity(fn)


def default_namespace(identity: Identity, *, shared: bool) -> str:
    """The namespace a function gets without ``namespace=``.

    Raises:
        ConfigurationError: the stack has a shared layer and the function's name is not an
            identity (a lambda, or a function made inside another function).
    """
    if shared and "<lambda>" in identity.qualname:
        raise ConfigurationError(
            f"{identity.name} is a lambda: every lambda has the same name, so in a shared layer "
            "two lambdas (in this process or another) would read each other's entries; pass "
            'namespace= naming it, e.g. cw.cached(..., namespace="times_two")(lambda x: 2 * x), '
            "or define it with def"
        )
    return identity.name


_CLAIMS: weakref.WeakKeyDictionary[object, dict[str, Identity]] = weakref.WeakKeyDictionary()
#: Layers that cannot be weakly referenced, kept alive with their claims (so their id cannot be
#: reused by a new object, which would inherit claims that are not its own).
_CLAIMS_BY_ID: dict[int, tuple[object, dict[str, Identity]]] = {}
_LOCK = _forksafe.lock()


def _claims_of(layer: object) -> dict[str, Identity]:
    try:
        return _CLAIMS.setdefault(layer, {})
    except TypeError:  # not weak-referenceable: keyed by id for the life of the process
        return _CLAIMS_BY_ID.setdefault(id(layer), (layer, {}))[1]


def claim(layer: object, namespace: str, identity: Identity, *, what: str) -> None:
    """Record that ``identity`` owns ``namespace`` on ``layer``.

    Args:
        what: how the error names the layer (``"layers[1]"``).

    Raises:
        ConfigurationError: another live function already owns it.
    """
    with _LOCK:
        claims = _claims_of(layer)
        holder = claims.get(namespace)
        if holder is not None and not holder.same_function(identity):
            # The first owner may be garbage that only a cycle keeps alive (a decorated
            # function refers to itself through its wrapper): collect once before refusing.
            with warnings.catch_warnings():
                # Finalizers of other garbage run here; their ResourceWarnings (an unclosed
                # socket somewhere else) are not this decoration's business.
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            if holder.ref() is not None:
                raise ConfigurationError(_conflict(layer, namespace, holder, identity, what))
        claims[namespace] = identity


def _conflict(layer: object, namespace: str, holder: Identity, new: Identity, what: str) -> str:
    if getattr(layer, "local", False):
        return (
            f"{what} is a MemoryLayer already used by {holder.name}; give each cached function "
            f"its own MemoryLayer (a shared one would mix their keys), here for {new.name}"
        )
    if holder.code is not None and holder.code is new.code:
        outer = new.qualname.split(".<locals>.")[0]
        how = (
            f"both were made by {outer}() (same code, different closures): pass each one its "
            "own namespace=, built from what makes it different, e.g. "
            f'namespace=f"{outer}:{{table}}" for {outer}(table)'
        )
    else:
        how = "give one of them another namespace="
    return (
        f"namespace={namespace!r} on {what} ({type(layer).__name__}) already belongs to "
        f"{holder.name}, which is still alive; {new.name} would read its entries. {how}"
    )
