"""Django integration: a cache backend with cacheward's guarantees, and decorators whose layers
and limiter come from ``settings.CACHEWARD``.

``pip install 'cacheward[django]'``. See ``docs/django.md``.

- :class:`RedisCache`: ``CACHES = {"default": {"BACKEND":
  "cacheward.contrib.django.RedisCache", "LOCATION": "redis://..."}}`` gives
  ``cache.get/set/add/get_or_set/delete`` bounded timeouts, a breaker, an in-process fallback
  while Redis is down, single-flight ``get_or_set`` and signed serialization.
- :func:`cached` and :func:`guard`: ``cw.cached`` / ``cw.guard`` with ``layers=`` (and, for
  ``guard``, ``limiter=``) built from ``settings.CACHEWARD``.
"""

from __future__ import annotations

from cacheward.contrib import missing_dependency

try:
    import django  # noqa: F401 - only to fail early, naming the extra
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides the package
    raise missing_dependency("django", "django", _exc) from _exc

from cacheward.contrib.django._backend import RedisCache
from cacheward.contrib.django._settings import cached, guard, layers, limiter, reset

__all__ = ["RedisCache", "cached", "guard", "layers", "limiter", "reset"]
