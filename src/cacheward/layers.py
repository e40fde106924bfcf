"""What a cache layer author needs: the protocols, the values they carry, and the breaker.

A layer implements :class:`Layer` (or :class:`AsyncLayer` for ``async def`` functions); a shared
layer that can also give one process per key the right to fetch implements
:class:`LeasingLayer` / :class:`AsyncLeasingLayer`. A layer may own its :class:`LayerBreaker`
(a ``breaker`` attribute); otherwise the first cached function using it makes one.
"""

from __future__ import annotations

from cacheward._core.entry import Entry, Freshness
from cacheward._core.keys import CacheKey
from cacheward._layers import (
    AsyncLayer,
    AsyncLeasingLayer,
    Layer,
    LayerBreaker,
    LeaseReply,
    LeasingLayer,
    MemoryLayer,
)
from cacheward._serialize import Serializer

__all__ = [
    "AsyncLayer",
    "AsyncLeasingLayer",
    "CacheKey",
    "Entry",
    "Freshness",
    "Layer",
    "LayerBreaker",
    "LeaseReply",
    "LeasingLayer",
    "MemoryLayer",
    "Serializer",
]
