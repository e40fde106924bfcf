"""The wrapper a cached function's callers actually call: the hot path of a fresh hit.

A fresh hit is the one path that must be cheap (the target is within 4x of
``functools.lru_cache``), so the wrapper is generated from one template, rendered once for
``def`` and once for ``async def``: the two colours cannot drift apart, and each pays only for
what it does.

- For the most common shape — a function of exactly one positional parameter without a default,
  called with a ``str`` or ``int`` — the wrapper has that parameter, by name, as its signature.
  Keyword calls (``f(customer="a")``) bind to it as usual, and no ``*args`` tuple or
  ``**kwargs`` dict is built: about 20 ns of a ~130 ns hit.
- Otherwise the wrapper takes ``(first=_NOARG, /, *args, **kwargs)`` and handles the one-``str``
  or one-``int`` call itself, passing everything else to ``general``.

In both, an exact ``str`` or ``int`` argument is its own memory key (their equality is already
type-safe; see :func:`cacheward._core.keys.local_key`), the entry is looked up with the memory
layer's bare ``dict.get``, and its ``fresh_until`` is compared with the clock — the first line
of :func:`cacheward._core.entry.classify` (``+entry`` is ``fresh_until`` as a plain float: an
entry is a float subclass, see :class:`~cacheward._core.entry.Entry`). Hits are counted in a
closure cell.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["NOARG", "build_wrapper"]

#: The default of the generic wrapper's first parameter: "no positional argument given".
NOARG: Any = type("NoArg", (), {"__repr__": lambda self: "<no argument>"})()

_TEMPLATE = """
def build(lookup, now, serve, local_of, hit_listeners, emit, HIT, source, NOARG, fn, testmode,
          bypassed):
    hits = 0

    {adef} general(first, args, kwargs):
        nonlocal hits
        call_args = args if first is NOARG else (first, *args)
        if testmode and bypassed():
            return {await_}fn(*call_args, **kwargs)
        local = local_of(call_args, kwargs)
        entry = lookup(local)
        if entry is not None and now() < +entry:
            hits += 1
            if hit_listeners:
                emit(HIT, source)
            return entry.value
        return {await_}serve(local, entry, call_args, kwargs)

    {adef} wrapper({params}):
        nonlocal hits
        if not testmode and ({fast_case}):
            entry = lookup({arg})
            if entry is not None and now() < +entry:
                hits += 1
                if hit_listeners:
                    emit(HIT, source)
                return entry.value
            return {await_}serve({arg}, entry, ({arg},), {{}})
        return {await_}general({general_args})

    def set_lookup(new):
        nonlocal lookup
        lookup = new

    return wrapper, lambda: hits, set_lookup
"""


def _single_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s only parameter, if it has exactly one positional one, no default."""
    import inspect  # at decoration: importing cacheward does not load it

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) != 1:
        return None
    (param,) = params
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if param.kind not in positional or param.default is not inspect.Parameter.empty:
        return None
    name = param.name
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
        return None
    # Never shadow a name the template itself uses.
    if name in {"lookup", "set_lookup", "now", "serve", "local_of", "hit_listeners", "emit",
                "HIT", "source", "NOARG", "hits", "entry", "general", "wrapper", "first", "args",
                "kwargs", "call_args", "local", "fn", "testmode", "bypassed"}:  # fmt: skip
        return None
    positional_only = param.kind is inspect.Parameter.POSITIONAL_ONLY
    return f"{name}, /" if positional_only else name


def build_wrapper(
    fn: Callable[..., Any],
    *,
    is_async: bool,
    keyed: bool,
    lookup: Callable[[Hashable], Any],
    now: Callable[[], float],
    serve: Callable[..., Any],
    local_of: Callable[[tuple[Any, ...], dict[str, Any]], Hashable],
    hit_listeners: list[Any],
    emit: Callable[..., None],
    hit_kind: object,
    source: str,
    testmode: list[object],
    bypassed: Callable[[], bool],
) -> tuple[Callable[..., Any], Callable[[], int], Callable[[Callable[[Hashable], Any]], None]]:
    """Return the wrapper for ``fn``, a function reading its hit counter, and one replacing its
    ``lookup`` (the backplane swaps in a checking lookup while its channel is down; the hit
    path itself is the same code either way).

    ``keyed`` (a ``key=`` function is in use) sends every call through ``general``, since the
    key is then not the argument itself. ``testmode`` is :data:`cacheward._testmode.ACTIVE`:
    while it is non-empty every call goes through ``general``, which calls ``fn`` directly when
    ``bypassed()`` says so (see ``cacheward.testing.disabled``).
    """
    single = None if keyed else _single_parameter(fn)
    if single is not None:
        arg = single.removesuffix(", /")
        params = single
        fast_case = f"type({arg}) is str or type({arg}) is int"
        general_args = f"NOARG, ({arg},), {{}}"
    elif keyed:
        arg, params = "first", "*args, **kwargs"
        fast_case = "False"
        general_args = "NOARG, args, kwargs"
    else:
        arg, params = "first", "first=NOARG, /, *args, **kwargs"
        fast_case = "not args and not kwargs and (type(first) is str or type(first) is int)"
        general_args = "first, args, kwargs"
    source_code = _TEMPLATE.format(
        adef="async def" if is_async else "def",
        await_="await " if is_async else "",
        params=params,
        arg=arg,
        fast_case=fast_case,
        general_args=general_args,
    )
    namespace: dict[str, Any] = {}
    filename = f"<cacheward wrapper of {getattr(fn, '__qualname__', fn)!s}>"
    exec(compile(source_code, filename, "exec"), namespace)  # noqa: S102 - our own template
    wrapper, hits, set_lookup = namespace["build"](
        lookup,
        now,
        serve,
        local_of,
        hit_listeners,
        emit,
        hit_kind,
        source,
        NOARG,
        fn,
        testmode,
        bypassed,
    )
    return wrapper, hits, set_lookup
